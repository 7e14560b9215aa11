//! `metalmesh ca init|issue`: the mesh certificate authority.

use clap::Subcommand;
use metalmesh_inventory::pki;
use std::path::PathBuf;

/// Where `ca init` puts the CA unless told otherwise.
pub const DEFAULT_CA_DIR: &str = "/etc/metalmesh/mesh-ca";

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the mesh CA (ca.pem, and ca.key with mode 0600).
    Init {
        /// Directory for ca.pem and ca.key; existing files are never overwritten.
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        dir: PathBuf,
        /// Name put in the CA's subject (e.g. the partition).
        #[arg(long, default_value = "metalmesh")]
        name: String,
    },
    /// Issue a node certificate signed by the mesh CA.
    Issue {
        /// The node's mesh name (its switch name); becomes the certificate's DNS name.
        #[arg(long)]
        node: String,
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        ca_dir: PathBuf,
        /// Directory for <node>.pem and <node>.key.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = pki::NODE_VALIDITY_DAYS)]
        days: i64,
    },
}

pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir, name } => {
            let (cert, key) = pki::init_ca_files(&dir, &name)?;
            println!("CA certificate: {}", cert.display());
            println!(
                "CA key:         {} (keep it off the switches)",
                key.display()
            );
        }
        CaCommand::Issue {
            node,
            ca_dir,
            out,
            days,
        } => {
            let (cert, key) = pki::issue_node_files(&ca_dir, &node, &out, days)?;
            println!("node certificate: {}", cert.display());
            println!("node key:         {}", key.display());
        }
    }
    Ok(())
}
