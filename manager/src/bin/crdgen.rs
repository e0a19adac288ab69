//! Prints the manager's CustomResourceDefinitions as one YAML stream, or,
//! given a directory, writes one file per CRD there (what
//! `manifests/manager/crds/` holds: `cargo run --bin crdgen -- manifests/manager/crds`).

use std::path::PathBuf;

use kubevirt_hcp_manager::crds;

fn main() -> anyhow::Result<()> {
    match std::env::args_os().nth(1).map(PathBuf::from) {
        None => print!("{}", crds::render()?),
        Some(dir) => {
            for crd in crds::all() {
                let path = dir.join(crds::file_name(&crd));
                std::fs::write(&path, crds::render_one(&crd)?)?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
