//! `scripts/bench dataplane`: converges N tenant VRFs with M remote routes
//! each from an empty kernel through the agent's reconciler code, times a
//! pass with nothing to change, and writes the same objects as an `ip -batch`
//! script so the harness can time iproute2 on the same kernel.
//! Run inside a fresh network namespace: `dataplane-bench VRFS ROUTES_PER_VRF BATCH_FILE`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Instant;

use metalmesh_agent::dataplane::desired::{self, NextHop, Object};
use metalmesh_agent::dataplane::intent::{Prefix, RemoteIntent, VrfIntent};
use metalmesh_agent::dataplane::kernel;

const VTEP: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);

fn intents(vrfs: u32, routes: u32) -> Vec<VrfIntent> {
    (0..vrfs)
        .map(|i| {
            let (a, b) = ((i / 256) as u8, (i % 256) as u8);
            VrfIntent {
                name: format!("tenant-{i}"),
                vni: 100_000 + i,
                table: 10_000 + i,
                prefixes: vec![Prefix {
                    address: Ipv4Addr::new(10, a, b, 0),
                    len: 24,
                }],
                ports: vec![],
                remotes: (0..routes)
                    .map(|k| RemoteIntent {
                        prefix: Prefix {
                            address: Ipv4Addr::new(10, a, b, (k % 250 + 1) as u8),
                            len: 32,
                        },
                        vtep: Ipv4Addr::new(10, 255, 1, (k % 5 + 2) as u8),
                        router_mac: None,
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The same objects as iproute2 commands, in creation order.
fn batch(objects: &BTreeSet<Object>) -> String {
    let mut out = String::new();
    for o in objects {
        let _ = match o {
            Object::Vrf { name, table } => {
                writeln!(out, "link add {name} up type vrf table {table}")
            }
            Object::Bridge { name, mac, vrf } => match vrf {
                Some(vrf) => writeln!(
                    out,
                    "link add {name} address {mac} up master {vrf} type bridge"
                ),
                None => writeln!(out, "link add {name} address {mac} up type bridge"),
            },
            Object::Vxlan {
                name,
                vni,
                local,
                bridge,
            } => writeln!(
                out,
                "link add {name} up master {bridge} type vxlan id {vni} local {local} dstport 4789 nolearning"
            ),
            Object::RoutedPort { .. } | Object::Address { .. } => Ok(()),
            Object::Rule { iif, to, table } => writeln!(
                out,
                "rule add priority 20000{}{} lookup {table}",
                iif.as_ref()
                    .map(|i| format!(" iif {i}"))
                    .unwrap_or_default(),
                to.map(|t| format!(" to {t}")).unwrap_or_default()
            ),
            Object::Route {
                table,
                dst,
                next_hop,
            } => match next_hop {
                NextHop::Unreachable => {
                    writeln!(out, "route add unreachable {dst} table {table} proto 245")
                }
                NextHop::Device { dev } => {
                    writeln!(out, "route add {dst} dev {dev} table {table} proto 245")
                }
                NextHop::ViaOnlink { via, dev } => {
                    writeln!(
                        out,
                        "route add {dst} via {via} dev {dev} onlink table {table} proto 245"
                    )
                }
            },
            Object::Neighbor { dev, ip, mac } => {
                writeln!(out, "neigh add {ip} lladdr {mac} dev {dev} nud permanent")
            }
            Object::Fdb { .. } => Ok(()), // `bridge fdb` is a separate tool; see below
        };
    }
    out
}

fn fdb_batch(objects: &BTreeSet<Object>) -> String {
    let mut out = String::new();
    for o in objects {
        if let Object::Fdb { dev, mac, dst } = o {
            let _ = writeln!(out, "fdb add {mac} dev {dev} dst {dst} self permanent");
        }
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (vrfs, routes, file) = match args.as_slice() {
        [_, v, r, f] => (v.parse::<u32>()?, r.parse::<u32>()?, f.clone()),
        _ => anyhow::bail!("usage: dataplane-bench VRFS ROUTES_PER_VRF BATCH_FILE"),
    };
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let mode = metalmesh_agent::dataplane::mode::detect(&handle).await;
    let desired = desired::render(&intents(vrfs, routes), mode, VTEP);
    std::fs::write(&file, batch(&desired))?;
    std::fs::write(format!("{file}.fdb"), fdb_batch(&desired))?;
    let routes_total = desired
        .iter()
        .filter(|o| matches!(o, Object::Route { .. }))
        .count();

    let started = Instant::now();
    let state = kernel::read(&handle).await?;
    let plan = desired::diff(&desired, &state.objects);
    let failures = kernel::apply(&handle, &plan, &state, "mm-pxe").await;
    let converge = started.elapsed();
    if let Some(f) = failures.first() {
        anyhow::bail!(
            "{} objects failed, first: {:?}: {}",
            failures.len(),
            f.object,
            f.error
        );
    }
    let started = Instant::now();
    let state = kernel::read(&handle).await?;
    let read = started.elapsed();
    let plan = desired::diff(&desired, &state.objects);
    let no_change = started.elapsed();
    if !plan.is_empty() {
        anyhow::bail!(
            "not converged: {} to add, {} to remove",
            plan.add.len(),
            plan.remove.len()
        );
    }
    println!(
        "mode={mode:?} objects={} routes={routes_total} converge_ms={} nochange_ms={} (read {} ms)",
        desired.len(),
        converge.as_millis(),
        no_change.as_millis(),
        read.as_millis()
    );
    Ok(())
}
