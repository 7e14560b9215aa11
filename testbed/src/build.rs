//! `up` and `down`: building the data center in the kernel and removing it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::daemon::{DaemonSpec, kill_all_in_netns};
use crate::error::Error;
use crate::plan::{
    API_SIDE, BENCH_NAMESPACE_PREFIX, HOST_LINK, HOST_SIDE, MachineKind, NAMESPACE_PREFIX,
    PROVISIONING_BRIDGE, Plan, Role, RunDir, namespace_of,
};
use crate::state::{STATE_VERSION, State};
use crate::sys::{have_program, in_netns, ip_batch, list_netns};
use crate::topology::Topology;
use crate::{Progress, Testbed, frr, qemu};

/// Programs `up` needs, with the Debian package that provides each.
fn required_programs(topology: &Topology) -> Vec<(&'static str, &'static str)> {
    let mut programs = vec![
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        (frr::ZEBRA, "frr"),
        (frr::BGPD, "frr"),
        (frr::VTYSH, "frr"),
    ];
    if topology.vm_machines > 0 {
        programs.push((qemu::QEMU, "qemu-system-x86"));
        programs.push((qemu::VIRTIO_NET_ROM, "ipxe-qemu"));
    }
    programs
}

/// Which run directory's testbed holds the host's `mm-*` namespaces. A
/// test or bench starting its own testbed must not tear down another that
/// is still running (a benchmark's, or a developer's), whatever its run
/// directory; one whose daemons are all gone is a leftover and is removed.
const OWNER_FILE: &str = "/run/metalmesh-testbed.owner";

/// The other testbed that is up, if any (`run` itself does not count).
fn held_by_another(run: &RunDir) -> Option<std::path::PathBuf> {
    let owner = std::path::PathBuf::from(std::fs::read_to_string(OWNER_FILE).ok()?.trim());
    if owner.as_os_str().is_empty() || same_dir(&owner, &run.root) {
        return None;
    }
    let state = State::load(&RunDir::new(&owner).state_file()).ok()??;
    let alive = state
        .daemons
        .values()
        .flatten()
        .any(|d| d.running_pid().is_some());
    alive.then_some(owner)
}

fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn claim(run: &RunDir) -> Result<(), Error> {
    let root = run.root.canonicalize().unwrap_or_else(|_| run.root.clone());
    std::fs::write(OWNER_FILE, root.display().to_string())
        .map_err(|e| Error::io(std::path::Path::new(OWNER_FILE), e))
}

fn release(run: &RunDir) {
    let owner = std::fs::read_to_string(OWNER_FILE).unwrap_or_default();
    if same_dir(std::path::Path::new(owner.trim()), &run.root) || held_by_another(run).is_none() {
        let _ = std::fs::remove_file(OWNER_FILE);
    }
}

fn ensure_root() -> Result<(), Error> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::NotRoot)
    }
}

/// Namespaces left by an earlier testbed (the `mm-` prefix is the testbed's).
fn testbed_namespaces() -> Result<Vec<String>, Error> {
    Ok(list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(NAMESPACE_PREFIX) && !n.starts_with(BENCH_NAMESPACE_PREFIX))
        .collect())
}

pub(crate) fn up(
    run: RunDir,
    topology: &Topology,
    progress: &mut dyn Progress,
) -> Result<Testbed, Error> {
    ensure_root()?;
    for (program, package) in required_programs(topology) {
        if !have_program(program) {
            return Err(Error::MissingProgram {
                program: program.to_string(),
                package,
            });
        }
    }
    // A qemu machine without a kernel and initramfs to netboot would sit in
    // iPXE forever: refuse before anything is built.
    if topology.vm_machines > 0 {
        let boot = crate::agent::boot_dir();
        for file in ["vmlinuz", "initramfs.img"] {
            let path = boot.join(file);
            if !path.is_file() {
                return Err(Error::MissingBootArtifacts { missing: path });
            }
        }
    }
    if run.state_file().exists() {
        return Err(Error::AlreadyUp {
            run_dir: run.root.clone(),
        });
    }
    if let Some(run_dir) = held_by_another(&run) {
        return Err(Error::HeldByAnother { run_dir });
    }
    let leftovers = testbed_namespaces()?;
    if !leftovers.is_empty() {
        return Err(Error::Leftovers {
            namespaces: leftovers.join(", "),
        });
    }

    let agent_binary = crate::agent::binary()?;
    let plan = Plan::new(topology);
    let daemons = daemon_specs(&plan, &run, &agent_binary)?;
    let state = State {
        version: STATE_VERSION,
        plan,
        daemons,
    };
    std::fs::create_dir_all(&run.root).map_err(|e| Error::io(&run.root, e))?;
    // The state goes first: if anything below fails or the process dies,
    // `down` still knows what to remove.
    state.save(&run.state_file())?;
    claim(&run)?;
    let testbed = Testbed { run, state };
    match build(&testbed, progress) {
        Ok(()) => Ok(testbed),
        Err(error) => {
            progress.step(&format!("up failed ({error}); removing what was created"));
            if let Err(cleanup) = down(&testbed.run, &mut crate::Quiet) {
                tracing::error!(%cleanup, "cleanup after failed up");
            }
            Err(error)
        }
    }
}

fn daemon_specs(
    plan: &Plan,
    run: &RunDir,
    agent_binary: &std::path::Path,
) -> Result<BTreeMap<String, Vec<DaemonSpec>>, Error> {
    let mut daemons: BTreeMap<String, Vec<DaemonSpec>> = BTreeMap::new();
    for node in plan.nodes.iter().filter(|n| n.runs_frr()) {
        daemons.insert(node.name.clone(), frr::daemons(node, run));
    }
    // Leaves run the agent after their routing daemons.
    for leaf in plan.nodes.iter().filter(|n| n.role == Role::Leaf) {
        daemons
            .entry(leaf.name.clone())
            .or_default()
            .push(crate::agent::daemon(leaf, run, agent_binary));
    }
    for machine in plan.machines.iter().filter(|m| m.kind == MachineKind::Vm) {
        daemons.insert(
            machine.name.clone(),
            vec![qemu::daemon(
                machine,
                run,
                plan.topology.vm_memory_mb,
                &namespace_of(&machine.leaf),
            )],
        );
    }
    if plan.topology.api {
        for node in plan.nodes.iter().filter(|n| n.role == Role::Api) {
            daemons.insert(node.name.clone(), crate::api::daemons(plan, node, run)?);
        }
    }
    Ok(daemons)
}

fn build(testbed: &Testbed, progress: &mut dyn Progress) -> Result<(), Error> {
    let plan = &testbed.state.plan;
    let run = &testbed.run;
    let namespaces = plan.namespaces();

    progress.step(&format!("creating {} network namespaces", namespaces.len()));
    let adds: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("netns add {ns}"))
        .collect();
    ip_batch(None, &adds)?;
    for node in &plan.nodes {
        let forwarding = node.role != Role::Api;
        configure_namespace(&node.namespace(), forwarding)?;
    }
    for machine in plan
        .machines
        .iter()
        .filter(|m| m.kind == MachineKind::Netns)
    {
        configure_namespace(&namespace_of(&machine.name), false)?;
    }

    progress.step(&format!("cabling {} fabric links", plan.links.len()));
    let veths: Vec<String> = plan
        .links
        .iter()
        .map(|l| {
            format!(
                "link add {} netns {} mtu {} type veth peer name {} netns {} mtu {}",
                l.a_interface,
                namespace_of(&l.a),
                l.mtu,
                l.b_interface,
                namespace_of(&l.b),
                l.mtu
            )
        })
        .collect();
    ip_batch(None, &veths)?;

    for node in &plan.nodes {
        let mut cmds = Vec::new();
        // The API node's address lives on its uplink; routers own a loopback /32.
        if node.role != Role::Api {
            cmds.push(format!("address add {}/32 dev lo", node.loopback));
        }
        for link in &plan.links {
            for (me, iface, addr) in [
                (
                    &link.a,
                    &link.a_interface,
                    link.addresses.map(|a| (a.0, a.2)),
                ),
                (
                    &link.b,
                    &link.b_interface,
                    link.addresses.map(|a| (a.1, a.2)),
                ),
            ] {
                if *me == node.name {
                    if let Some((address, len)) = addr {
                        cmds.push(format!("address add {address}/{len} dev {iface}"));
                    }
                    cmds.push(format!("link set {iface} up"));
                }
            }
        }
        if node.role == Role::Api {
            cmds.push(format!(
                "route add default via {}",
                crate::plan::EXIT_API_ADDRESS
            ));
        }
        if node.role == Role::Api {
            // The host reaches the API, the issuer and the image server
            // (all on the API's address) over a link of its own, so the
            // `metalmesh` CLI runs on the host as it would on a laptop.
            // Nothing else of the data center is routed to the host.
            // A link left by a testbed that was not taken down.
            let _ = std::process::Command::new("ip")
                .args(["link", "del", HOST_LINK])
                .stderr(std::process::Stdio::null())
                .status();
            ip_batch(
                None,
                &[
                    format!(
                        "link add {HOST_LINK} type veth peer name host netns {}",
                        node.namespace()
                    ),
                    format!("address add {HOST_SIDE}/30 dev {HOST_LINK}"),
                    format!("link set {HOST_LINK} up"),
                ],
            )?;
            cmds.push(format!("address add {API_SIDE}/30 dev host"));
            cmds.push("link set host up".to_string());
        }
        if let Some((address, len)) = node.provisioning {
            cmds.push(format!(
                "link add {PROVISIONING_BRIDGE} type bridge stp_state 0 forward_delay 0"
            ));
            cmds.push(format!(
                "address add {address}/{len} dev {PROVISIONING_BRIDGE}"
            ));
            cmds.push(format!("link set {PROVISIONING_BRIDGE} up"));
        }
        ip_batch(Some(&node.namespace()), &cmds)?;
    }

    if plan.nodes.iter().any(|n| n.role == Role::Api) {
        ip_batch(
            None,
            &[format!(
                "route replace {}/32 via {API_SIDE} dev {HOST_LINK}",
                crate::plan::API_ADDRESS
            )],
        )?;
    }

    if !plan.machines.is_empty() {
        progress.step(&format!("cabling {} machines", plan.machines.len()));
    }
    for machine in &plan.machines {
        let leaf_ns = namespace_of(&machine.leaf);
        let port = &machine.switch_port;
        match machine.kind {
            MachineKind::Netns => {
                let machine_ns = namespace_of(&machine.name);
                ip_batch(
                    None,
                    &[format!(
                        "link add {port} netns {leaf_ns} type veth peer name eth0 netns {machine_ns} address {}",
                        machine.mac
                    )],
                )?;
                ip_batch(Some(&machine_ns), &["link set eth0 up".to_string()])?;
            }
            MachineKind::Vm => {
                ip_batch(Some(&leaf_ns), &[format!("tuntap add {port} mode tap")])?;
                let dir = run.machine_dir(&machine.name);
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                let disk = run.disk(&machine.name);
                let file = std::fs::File::create(&disk).map_err(|e| Error::io(&disk, e))?;
                file.set_len(qemu::DISK_BYTES)
                    .map_err(|e| Error::io(&disk, e))?;
                let sercon = qemu::sercon_file(run, machine);
                std::fs::write(&sercon, qemu::SERCON_PORT).map_err(|e| Error::io(&sercon, e))?;
            }
        }
        ip_batch(
            Some(&leaf_ns),
            &[
                format!("link set {port} master {PROVISIONING_BRIDGE}"),
                format!("link set {port} up"),
            ],
        )?;
    }

    let frr_nodes: Vec<_> = plan.nodes.iter().filter(|n| n.runs_frr()).collect();
    for node in &frr_nodes {
        write_frr_config(run, node)?;
    }
    let leaves: Vec<_> = plan.nodes.iter().filter(|n| n.role == Role::Leaf).collect();
    if !leaves.is_empty() {
        issue_mesh_certificates(run, &leaves)?;
    }
    if plan.topology.api {
        crate::api::prepare(plan, run)?;
    }
    for leaf in &leaves {
        let dir = crate::agent::dir(run, &leaf.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = crate::agent::config_path(run, &leaf.name);
        std::fs::write(&path, crate::agent::config(plan, leaf, run))
            .map_err(|e| Error::io(&path, e))?;
    }
    progress.step(&format!(
        "starting FRR on {} routers and metalmesh-agent on {} leaves",
        frr_nodes.len(),
        leaves.len()
    ));
    for node in &plan.nodes {
        for daemon in testbed.daemons_of(&node.name) {
            daemon.start()?;
        }
    }

    let vms: Vec<_> = plan
        .machines
        .iter()
        .filter(|m| m.kind == MachineKind::Vm)
        .collect();
    if !vms.is_empty() {
        progress.step(&format!("powering on {} qemu machines", vms.len()));
    }
    for machine in vms {
        for daemon in testbed.daemons_of(&machine.name) {
            daemon.start()?;
        }
    }
    Ok(())
}

/// Loopback up and the sysctls a router (or a host) needs in a fresh namespace.
fn configure_namespace(namespace: &str, forwarding: bool) -> Result<(), Error> {
    ip_batch(Some(namespace), &["link set lo up".to_string()])?;
    let flag = if forwarding { "1" } else { "0" };
    let settings = [
        format!("net.ipv4.ip_forward={flag}"),
        format!("net.ipv6.conf.all.forwarding={flag}"),
        // Link-local addresses must be usable at once for BGP unnumbered.
        "net.ipv6.conf.all.accept_dad=0".to_string(),
        "net.ipv6.conf.default.accept_dad=0".to_string(),
        // Routed IPv4 with IPv6 next hops is asymmetric by design.
        "net.ipv4.conf.all.rp_filter=0".to_string(),
        "net.ipv4.conf.default.rp_filter=0".to_string(),
    ];
    let mut args = vec!["sysctl", "-q", "-w"];
    args.extend(settings.iter().map(String::as_str));
    in_netns(namespace, &args)?;
    Ok(())
}

fn write_frr_config(run: &RunDir, node: &crate::plan::Node) -> Result<(), Error> {
    let dir = run.frr_dir(&node.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let files = [
        (dir.join("zebra.conf"), frr::zebra_conf(node)),
        (dir.join("bgpd.conf"), frr::bgpd_conf(node)),
    ];
    for (path, text) in &files {
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    }
    // FRR drops privileges to the `frr` user; it must own its pid files and sockets.
    let user = nix::unistd::User::from_name("frr")
        .ok()
        .flatten()
        .ok_or(Error::MissingProgram {
            program: "user frr".into(),
            package: "frr",
        })?;
    for path in std::iter::once(dir.clone()).chain(files.iter().map(|(p, _)| p.clone())) {
        nix::unistd::chown(&path, Some(user.uid), Some(user.gid))
            .map_err(|e| Error::io(&path, e.into()))?;
    }
    Ok(())
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    pub namespaces: Vec<String>,
    pub daemons: usize,
}

pub(crate) fn down(run: &RunDir, progress: &mut dyn Progress) -> Result<DownReport, Error> {
    ensure_root()?;
    if let Some(run_dir) = held_by_another(run) {
        return Err(Error::HeldByAnother { run_dir });
    }
    let mut report = DownReport::default();
    // A broken state file must not prevent cleanup: fall back to the namespaces.
    let state = State::load(&run.state_file()).unwrap_or_else(|error| {
        tracing::warn!(%error, "ignoring unreadable state file");
        None
    });
    if let Some(state) = &state {
        let daemons: Vec<&DaemonSpec> = state.daemons.values().flatten().collect();
        let running: Vec<_> = daemons
            .iter()
            .filter(|d| d.running_pid().is_some())
            .collect();
        if !running.is_empty() {
            progress.step(&format!("stopping {} daemons", running.len()));
        }
        // Reverse start order: bgpd before zebra, machines before routers.
        for daemon in running.iter().rev() {
            // Keep going: whatever survives is killed with its namespace below.
            if let Err(error) = daemon.stop(nix::sys::signal::Signal::SIGTERM) {
                tracing::warn!(%error, "daemon did not stop");
            }
            report.daemons += 1;
        }
    }
    let namespaces = testbed_namespaces()?;
    if !namespaces.is_empty() {
        progress.step(&format!("removing {} network namespaces", namespaces.len()));
    }
    for namespace in &namespaces {
        kill_all_in_netns(namespace);
        ip_batch(None, &[format!("netns delete {namespace}")])?;
        report.namespaces.push(namespace.clone());
    }
    remove_run_files(run)?;
    release(run);
    Ok(report)
}

/// Removes only what the testbed writes, never anything else a user may
/// have put in (or pointed) the run directory at.
fn remove_run_files(run: &RunDir) -> Result<(), Error> {
    for dir in [
        run.root.join("nodes"),
        run.root.join("machines"),
        crate::agent::mesh_ca_dir(run),
    ] {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    for file in [
        run.state_file(),
        run.state_file().with_extension("json.tmp"),
    ] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&file, e)),
        }
    }
    // Only succeeds when empty, which is what we want.
    let _ = std::fs::remove_dir(&run.root);
    Ok(())
}

/// Waits until every BGP session of every FRR router is Established.
pub(crate) fn wait_converged(
    testbed: &Testbed,
    timeout: Duration,
    progress: &mut dyn Progress,
) -> Result<(), Error> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        let status = testbed.status();
        let (up, total) = status.bgp_counts();
        if last != Some(up) {
            progress.step(&format!("BGP: {up}/{total} sessions Established"));
            last = Some(up);
        }
        if up == total {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("BGP convergence ({up}/{total} sessions Established)"),
                seconds: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The mesh CA of this testbed and one certificate per leaf, made with the
/// `metalmesh` CLI as an operator would.
fn issue_mesh_certificates(run: &RunDir, leaves: &[&crate::plan::Node]) -> Result<(), Error> {
    let cli = crate::agent::cli_binary()?;
    let ca_dir = crate::agent::mesh_ca_dir(run);
    let ca = ca_dir.display().to_string();
    crate::sys::run(
        &cli.display().to_string(),
        &["ca", "init", "--dir", &ca, "--name", "testbed"],
    )?;
    for leaf in leaves {
        let out = crate::agent::mesh_dir(run, &leaf.name)
            .display()
            .to_string();
        // The leaf advertises its loopback in the mesh; its certificate
        // says so, and peers hold it to that.
        let loopback = leaf.loopback.to_string();
        crate::sys::run(
            &cli.display().to_string(),
            &[
                "ca",
                "issue",
                "--node",
                &leaf.name,
                "--role",
                "leaf",
                "--address",
                &loopback,
                "--ca-dir",
                &ca,
                "--out",
                &out,
            ],
        )?;
    }
    Ok(())
}
