//! `parley-pki DIR CLUSTER NODE...`: write a throwaway CA and certificates for a local
//! cluster into DIR (used by `scripts/cluster.sh`): `ca.crt`, one `<node>.crt/.key` per node
//! (naming `spiffe://parley/<CLUSTER>/node/<node>`), `etcd-server.crt/.key` and one
//! `client-etcd-<node>.crt/.key` per node. For development only: the CA key is not kept.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, cluster, nodes @ ..] = args.as_slice() else {
        eprintln!("usage: parley-pki DIR CLUSTER NODE...");
        return std::process::ExitCode::from(2);
    };
    let pki = parley_testkit::Pki::in_dir(std::path::Path::new(dir), cluster, "parley dev CA");
    pki.etcd_server();
    for node in nodes {
        pki.node(node);
        pki.client(&format!("etcd-{node}"));
    }
    println!(
        "wrote a throwaway CA and certificates for {} nodes into {dir}",
        nodes.len()
    );
    std::process::ExitCode::SUCCESS
}
