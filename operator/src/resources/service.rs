//! The two Services: a headless one for the pods' stable DNS names, and the client one.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, base_name, child_meta, headless_name, selector_labels};
use crate::crd::ChatCluster;

/// `<name>-headless`: gives pod `<name>-N` the name `<name>-N.<name>-headless.<ns>.svc`, which
/// the nodes advertise in etcd. Not-ready pods are published too, so a starting node can be
/// dialled by its peers before it passes readiness.
pub fn headless_service(cc: &ChatCluster) -> Service {
    Service {
        metadata: child_meta(cc, headless_name(cc)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(cc)),
            ports: Some(vec![http_port(HTTP_PORT), internal_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `<name>`: what clients reach (HTTP API and WebSocket), type and port from `spec.service`.
pub fn client_service(cc: &ChatCluster) -> Service {
    Service {
        metadata: child_meta(cc, base_name(cc)),
        spec: Some(ServiceSpec {
            type_: Some(cc.spec.service.type_.as_str().into()),
            selector: Some(selector_labels(cc)),
            ports: Some(vec![http_port(cc.spec.service.port)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The node-to-node port (mutual TLS), on the headless Service only: clients never see it.
fn internal_port() -> ServicePort {
    ServicePort {
        name: Some("internal".into()),
        port: super::INTERNAL_PORT,
        target_port: Some(IntOrString::String("internal".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

fn http_port(port: i32) -> ServicePort {
    ServicePort {
        name: Some("http".into()),
        port,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        app_protocol: Some("http".into()),
        ..ServicePort::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ServiceType;

    #[test]
    fn headless_service_is_headless_and_publishes_not_ready_pods() {
        let svc = headless_service(&ChatCluster::test());
        assert_eq!(svc.metadata.name.as_deref(), Some("demo-headless"));
        assert_eq!(svc.metadata.namespace.as_deref(), Some("chat"));
        let spec = svc.spec.unwrap_or_default();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector, Some(selector_labels(&ChatCluster::test())));
        let ports = spec.ports.unwrap_or_default();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].port, 8080);
        assert_eq!(ports[1].name.as_deref(), Some("internal"));
        assert_eq!(
            ports[1].port, 8081,
            "the node-to-node port, for the pods' DNS names"
        );
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
    }

    #[test]
    fn client_service_takes_type_and_port_from_the_spec() {
        let default = client_service(&ChatCluster::test())
            .spec
            .unwrap_or_default();
        assert_eq!(default.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(default.ports.as_ref().map(|p| p[0].port), Some(80));

        let mut cc = ChatCluster::test();
        cc.spec.service.type_ = ServiceType::LoadBalancer;
        cc.spec.service.port = 443;
        let svc = client_service(&cc);
        assert_eq!(svc.metadata.name.as_deref(), Some("demo"));
        let spec = svc.spec.unwrap_or_default();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let ports = spec.ports.unwrap_or_default();
        assert_eq!(ports[0].port, 443);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        assert_eq!(
            spec.cluster_ip, None,
            "the client Service gets a cluster IP"
        );
    }
}
