//! Prints the ChatCluster CRD as YAML. `crds/chatclusters.parley.dev.yaml` (and the chart's
//! copy) is this program's output: `cargo run -p operator --bin crdgen > crds/chatclusters.parley.dev.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", operator::crd::crd_yaml()?);
    Ok(())
}
