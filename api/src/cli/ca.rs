//! `metalmesh ca init|issue|revoke`: the mesh certificate authority.

use clap::Subcommand;
use metalmesh_inventory::pki::{self, NodeIdentity};
use metalmesh_inventory::trust::Role;
use std::net::IpAddr;
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
        /// What the node is: `leaf` (a switch agent), `api` (the API node)
        /// or `operator`; decides which records it may write.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// An address the node may advertise in the mesh (repeatable; e.g.
        /// the leaf's loopback). Without, peers accept the address it
        /// connects from.
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        #[command(flatten)]
        issuing: Issuing,
    },
    /// Issue an HTTPS certificate for the API node (ECDSA P-256, which
    /// browsers accept for the web view; the mesh certificate is Ed25519).
    /// Give it to the API as `[http] cert` and `key`.
    IssueHttps {
        /// The API's DNS name.
        #[arg(long)]
        name: String,
        /// An address users reach the API at (repeatable).
        #[arg(long = "address")]
        addresses: Vec<IpAddr>,
        #[command(flatten)]
        issuing: Issuing,
    },
    /// Revoke a node: writes a revocation signed by the CA key, for any
    /// agent to spread through the mesh (`metalmesh-agent mesh revoke FILE`).
    /// Its connections are closed and what it signs from now on is refused;
    /// a certificate issued for the name afterwards is accepted again.
    Revoke {
        #[arg(long)]
        node: String,
        #[arg(long, default_value = DEFAULT_CA_DIR)]
        ca_dir: PathBuf,
        /// Why, kept in the revocation.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Where a certificate is issued from and to, and for how long.
#[derive(Debug, clap::Args)]
pub struct Issuing {
    #[arg(long, default_value = DEFAULT_CA_DIR)]
    ca_dir: PathBuf,
    /// Directory for the certificate and its key (`<node>.pem`/`.key`, or
    /// `<name>-https.pem`/`.key`).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Validity in days (agents pick up a renewed certificate without a
    /// restart, so keep it short).
    #[arg(long, default_value_t = pki::NODE_VALIDITY_DAYS)]
    days: i64,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| {
        let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role {text:?}; one of {}", known.join(", "))
    })
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
            role,
            addresses,
            issuing: Issuing { ca_dir, out, days },
        } => {
            let identity = NodeIdentity {
                node,
                role,
                addresses,
            };
            let (cert, key) = pki::issue_node_files(&ca_dir, &identity, &out, days)?;
            println!("node certificate: {} ({role})", cert.display());
            println!("node key:         {}", key.display());
        }
        CaCommand::IssueHttps {
            name,
            addresses,
            issuing: Issuing { ca_dir, out, days },
        } => {
            let (cert, key) = pki::issue_https_files(&ca_dir, &name, &addresses, &out, days)?;
            println!("HTTPS certificate: {}", cert.display());
            println!("HTTPS key:         {}", key.display());
        }
        CaCommand::Revoke {
            node,
            ca_dir,
            reason,
        } => {
            let (path, _) = pki::revoke_node(&ca_dir, &node, &reason)?;
            println!("revocation of {node}: {}", path.display());
            println!(
                "spread it with: metalmesh-agent mesh revoke {}",
                path.display()
            );
        }
    }
    Ok(())
}
