//! The client side of the admin API, used by `metalmesh-agent` subcommands.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{AgentStatus, Request, Response, RouteView};
use crate::dataplane::intent::Rejection;
use crate::dataplane::{Intents, Plan};
use crate::lldp::LldpSnapshot;
use crate::machines::record::MachineRecord;
use crate::switch::Port;
use metalmesh_inventory::Record;
use metalmesh_inventory::mesh::service::MemberInfo;
use metalmesh_inventory::model::AllocateRequest;
use metalmesh_provisioning::dhcp::Lease;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {path}: {source} (is metalmesh-agent running? set --socket or METALMESH_AGENT_SOCKET)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin API I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent closed the connection without answering")]
    NoAnswer,
    #[error("unreadable answer from the agent: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the agent refused the request: {0}")]
    Refused(String),
    #[error(
        "the agent answered {request} with something else (agent and CLI of different versions?)"
    )]
    Unexpected { request: &'static str },
}

/// What the reconciler would change now, and the VRFs it refuses.
#[derive(Debug, Clone)]
pub struct DataplaneDiff {
    pub plan: Plan,
    pub rejected: Vec<Rejection>,
}

/// The mesh as the agent sees it: its own name and the other members.
#[derive(Debug, Clone)]
pub struct MeshMembers {
    pub node: String,
    pub members: Vec<MemberInfo>,
    pub health: metalmesh_inventory::mesh::service::MeshHealth,
}

/// Records of the replica, and which origins were revoked.
#[derive(Debug, Clone)]
pub struct MeshRecords {
    pub records: Vec<Record>,
    pub revoked: Vec<String>,
}

/// The BGP speaker's identity and sessions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BgpNeighbors {
    pub asn: u32,
    pub router_id: std::net::Ipv4Addr,
    pub peers: Vec<metalmesh_bgp::speaker::PeerView>,
}

/// The admin API of one agent, one typed method per request.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket: impl Into<PathBuf>) -> AdminClient {
        AdminClient {
            socket: socket.into(),
        }
    }

    pub async fn status(&self) -> Result<AgentStatus, ClientError> {
        self.ask("status", Request::Status, |r| match r {
            Response::Status(status) => Some(*status),
            _ => None,
        })
        .await
    }

    pub async fn lldp_neighbors(&self) -> Result<LldpSnapshot, ClientError> {
        self.ask("lldp neighbors", Request::LldpNeighbors, |r| match r {
            Response::LldpNeighbors(snapshot) => Some(snapshot),
            _ => None,
        })
        .await
    }

    pub async fn ports(&self) -> Result<Vec<Port>, ClientError> {
        self.ask("ports", Request::Ports, |r| match r {
            Response::Ports(ports) => Some(ports),
            _ => None,
        })
        .await
    }

    pub async fn leases(&self) -> Result<Vec<Lease>, ClientError> {
        self.ask("leases", Request::Leases, |r| match r {
            Response::Leases(leases) => Some(leases),
            _ => None,
        })
        .await
    }

    pub async fn port_bindings(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::policy::bindings::Binding>, ClientError>
    {
        self.ask("port bindings", Request::PortBindings, |r| match r {
            Response::PortBindings(bindings) => Some(bindings),
            _ => None,
        })
        .await
    }

    /// Forgets a port's binding; whether it had one.
    pub async fn port_unbind(&self, port: &str) -> Result<bool, ClientError> {
        self.ask(
            "port unbind",
            Request::PortUnbind {
                port: port.to_string(),
            },
            |r| match r {
                Response::PortUnbound { was_bound } => Some(was_bound),
                _ => None,
            },
        )
        .await
    }

    /// Replaces the operator's intents; returns the VRFs refused.
    pub async fn dataplane_apply(&self, intents: Intents) -> Result<Vec<Rejection>, ClientError> {
        self.ask(
            "dataplane apply",
            Request::DataplaneApply { intents },
            |r| match r {
                Response::DataplaneApplied { rejected } => Some(rejected),
                _ => None,
            },
        )
        .await
    }

    pub async fn dataplane_diff(&self) -> Result<DataplaneDiff, ClientError> {
        self.ask("dataplane diff", Request::DataplaneDiff, |r| match r {
            Response::DataplaneDiff { plan, rejected } => Some(DataplaneDiff { plan, rejected }),
            _ => None,
        })
        .await
    }

    pub async fn routes(&self, vrf: Option<String>) -> Result<Vec<RouteView>, ClientError> {
        self.ask("routes", Request::Routes { vrf }, |r| match r {
            Response::Routes(routes) => Some(routes),
            _ => None,
        })
        .await
    }

    pub async fn machines(&self) -> Result<Vec<MachineRecord>, ClientError> {
        self.ask("machines", Request::Machines, |r| match r {
            Response::Machines(machines) => Some(machines),
            _ => None,
        })
        .await
    }

    pub async fn machine_describe(&self, uuid: String) -> Result<MachineRecord, ClientError> {
        self.machine("machine describe", Request::MachineDescribe { uuid })
            .await
    }

    pub async fn machine_allocate(
        &self,
        uuid: String,
        allocation: AllocateRequest,
    ) -> Result<MachineRecord, ClientError> {
        self.machine(
            "machine allocate",
            Request::MachineAllocate { uuid, allocation },
        )
        .await
    }

    pub async fn machine_free(&self, uuid: String) -> Result<MachineRecord, ClientError> {
        self.machine("machine free", Request::MachineFree { uuid })
            .await
    }

    pub async fn mesh_members(&self) -> Result<MeshMembers, ClientError> {
        self.ask("mesh members", Request::MeshMembers, |r| match r {
            Response::MeshMembers {
                node,
                members,
                health,
            } => Some(MeshMembers {
                node,
                members,
                health,
            }),
            _ => None,
        })
        .await
    }

    pub async fn mesh_records(&self, kind: Option<String>) -> Result<MeshRecords, ClientError> {
        self.ask("mesh records", Request::MeshRecords { kind }, |r| match r {
            Response::MeshRecords { records, revoked } => Some(MeshRecords { records, revoked }),
            _ => None,
        })
        .await
    }

    /// Hands a CA-signed revocation to the agent; returns whether it was new.
    pub async fn mesh_revoke(&self, record: Record) -> Result<bool, ClientError> {
        self.ask("mesh revoke", Request::MeshRevoke { record }, |r| match r {
            Response::MeshRevoked { new, .. } => Some(new),
            _ => None,
        })
        .await
    }

    pub async fn bgp_neighbors(&self) -> Result<BgpNeighbors, ClientError> {
        self.ask("bgp neighbors", Request::BgpNeighbors, |r| match r {
            Response::BgpNeighbors {
                asn,
                router_id,
                peers,
            } => Some(BgpNeighbors {
                asn,
                router_id,
                peers,
            }),
            _ => None,
        })
        .await
    }

    pub async fn bgp_routes(
        &self,
        family: Option<String>,
        vrf: Option<String>,
    ) -> Result<Vec<metalmesh_bgp::driver::RouteView>, ClientError> {
        self.ask(
            "bgp routes",
            Request::BgpRoutes { family, vrf },
            |r| match r {
                Response::BgpRoutes(routes) => Some(routes),
                _ => None,
            },
        )
        .await
    }

    async fn machine(
        &self,
        name: &'static str,
        request: Request,
    ) -> Result<MachineRecord, ClientError> {
        self.ask(name, request, |r| match r {
            Response::Machine(machine) => Some(*machine),
            _ => None,
        })
        .await
    }

    async fn ask<T>(
        &self,
        name: &'static str,
        request: Request,
        pick: impl FnOnce(Response) -> Option<T>,
    ) -> Result<T, ClientError> {
        pick(self::request(&self.socket, &request).await?)
            .ok_or(ClientError::Unexpected { request: name })
    }
}

/// Sends one request and returns the response (an error answer as
/// [`ClientError::Refused`]).
async fn request(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let exchange = async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        write.write_all(&line).await?;
        let mut answer = String::new();
        if BufReader::new(read).read_line(&mut answer).await? == 0 {
            return Err(ClientError::NoAnswer);
        }
        match serde_json::from_str::<Response>(&answer)? {
            Response::Error { message } => Err(ClientError::Refused(message)),
            response => Ok(response),
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| ClientError::Timeout(TIMEOUT))?
}
