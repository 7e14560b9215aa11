// The metalmesh web view: racks → switch → ports → machines, a machine's
// hardware and events, a switch's LLDP neighbours and BGP sessions. It reads
// the same /v1 API as the CLI with the user's bearer token, so it sees
// exactly what the token may see; allocate/free appear only for roles that
// may change something. Data is written with textContent only, never as
// markup.
"use strict";

const POLL_MS = 2000;
const TOKEN_KEY = "metalmesh-token";
let who = null;
let timer = null;
let filters = { state: "", project: "", text: "" };
// The allocate form stays open across refreshes.
let allocating = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
  });
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!response.ok) {
    throw new ApiError(response.status, (body && (body.error || body.message)) || text || response.statusText);
  }
  return body;
}

function showLogin(message) {
  clearTimeout(timer);
  document.getElementById("login").hidden = false;
  document.getElementById("view").replaceChildren();
  document.getElementById("logout").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("login-error").textContent = message || "";
}

function stateBadge(state) {
  return h("span", { class: "state " + (state || "none").replace(/ /g, "-"), "data-state": state }, state || "—");
}

function mayChange(project) {
  if (!who) return false;
  if (who.role === "admin") return true;
  return who.role === "edit" && (!project || who.projects.includes(project));
}

function crumbs(...parts) {
  document.getElementById("crumbs").replaceChildren(...parts.flatMap((part, i) => i ? [" / ", part] : [part]));
}

function status(text, error) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = error ? "error" : "";
}

// The allocate form for a Waiting machine.
function allocateForm(machine, projects, networks) {
  const projectSelect = h("select", { name: "project", "aria-label": "project" },
    projects.filter((p) => mayChange(p.name)).map((p) => h("option", { value: p.name }, p.name)));
  const networkSelect = h("select", { name: "network", "aria-label": "network" });
  const fillNetworks = () => networkSelect.replaceChildren(...networks
    .filter((n) => n.shared || n.project === projectSelect.value)
    .map((n) => h("option", { value: n.id }, n.name + " " + n.prefixes.join(","))));
  projectSelect.addEventListener("change", fillNetworks);
  fillNetworks();
  const error = h("span", { class: "error" });
  const form = h("form", { class: "allocate", "data-machine": machine.uuid },
    projectSelect, networkSelect,
    h("input", { name: "hostname", placeholder: "hostname", required: true, "aria-label": "hostname" }),
    h("input", { name: "image", placeholder: "image", required: true, "aria-label": "image" }),
    h("button", { type: "submit" }, "Allocate"),
    h("button", { type: "button", onclick: () => { allocating = null; refresh(); } }, "Cancel"),
    error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      await api("/v1/machines/allocate", {
        method: "POST",
        body: JSON.stringify({
          machine: machine.uuid, project: data.get("project"), network: data.get("network"),
          hostname: data.get("hostname"), image: data.get("image"),
        }),
      });
      allocating = null;
      refresh();
    } catch (e) { error.textContent = e.message; }
  });
  return form;
}

function controls(machine) {
  if (!mayChange(machine.project)) return null;
  if (machine.project) {
    return h("button", {
      type: "button", class: "free", onclick: async (event) => {
        event.target.disabled = true;
        try { await api("/v1/machines/" + machine.uuid + "/free", { method: "POST" }); }
        catch (e) { status(e.message, true); }
        refresh();
      },
    }, "Free");
  }
  if (machine.state === "Waiting" && !machine.reservation && machine.flags.length === 0) {
    return h("button", { type: "button", class: "allocate", onclick: () => { allocating = machine.uuid; refresh(); } }, "Allocate");
  }
  return null;
}

function matches(machine) {
  if (filters.state && machine.state !== filters.state) return false;
  if (filters.project && (machine.project || "") !== filters.project) return false;
  if (filters.text) {
    const text = filters.text.toLowerCase();
    const fields = [machine.uuid, machine.hostname, machine.ip, machine.port, machine.size];
    if (!fields.some((f) => f && String(f).toLowerCase().includes(text))) return false;
  }
  return true;
}

function filterBar(machines) {
  const states = [...new Set(machines.map((m) => m.state))].sort();
  const projects = [...new Set(machines.map((m) => m.project).filter(Boolean))].sort();
  const select = (name, values) => {
    const el = h("select", { name, "aria-label": name },
      h("option", { value: "" }, "any " + name), values.map((v) => h("option", { value: v }, v)));
    el.value = filters[name];
    el.addEventListener("change", () => { filters[name] = el.value; refresh(); });
    return el;
  };
  const text = h("input", { type: "search", name: "text", placeholder: "uuid, hostname, ip", value: filters.text, "aria-label": "search" });
  text.addEventListener("change", () => { filters.text = text.value; refresh(); });
  return h("div", { class: "filters" }, select("state", states), select("project", projects), text);
}

async function overview() {
  crumbs(h("span", {}, "partitions"));
  const [partitions, switches, machines] = await Promise.all([
    api("/v1/partitions"), api("/v1/switches"), api("/v1/machines")]);
  let projects = [], networks = [];
  if (allocating) [projects, networks] = await Promise.all([api("/v1/projects"), api("/v1/networks")]);
  const byUuid = new Map(machines.map((m) => [m.uuid, m]));
  const view = [h("h1", {}, "Racks"), filterBar(machines)];
  for (const partition of partitions) {
    view.push(h("h2", {}, "Partition " + partition.name));
    const racks = h("div", { class: "racks" });
    // racks: rack name → its leaves.
    for (const [rackName, leaves] of Object.entries(partition.racks)) {
      for (const name of leaves) {
        const sw = switches.find((s) => s.name === name);
        if (!sw) continue;
        const rows = [];
        for (const port of sw.ports) {
          const machine = port.machine ? byUuid.get(port.machine) : null;
          if (!machine || !matches(machine)) continue;
          rows.push(h("tr", { "data-machine": machine.uuid },
            h("td", {}, port.name),
            h("td", {}, h("a", { href: "#/machine/" + machine.uuid }, machine.hostname || machine.uuid)),
            h("td", {}, stateBadge(machine.state)),
            h("td", { class: "live-" + machine.liveliness }, machine.liveliness),
            h("td", {}, machine.project ? machine.project + " " + (machine.ip || "") : h("span", { class: "muted" }, "free")),
            h("td", {}, controls(machine))));
          if (allocating === machine.uuid) {
            rows.push(h("tr", {}, h("td", { colspan: 6 }, allocateForm(machine, projects, networks))));
          }
        }
        racks.append(h("section", { class: "rack", "data-rack": rackName },
          h("h2", {}, rackName + " · ", h("a", { href: "#/switch/" + sw.name }, sw.name)),
          rows.length
            ? h("table", {}, h("thead", {}, h("tr", {}, ["port", "machine", "state", "liveliness", "allocation", ""].map((c) => h("th", {}, c)))), h("tbody", {}, rows))
            : h("p", { class: "muted" }, "no machines")));
      }
    }
    view.push(racks);
  }
  return view;
}

function hardware(hw) {
  if (!hw) return h("p", { class: "muted" }, "not registered yet");
  const gib = (bytes) => (bytes / 2 ** 30).toFixed(1) + " GiB";
  return h("dl", {},
    h("dt", {}, "vendor"), h("dd", {}, [hw.vendor, hw.product].filter(Boolean).join(" ") || "—"),
    h("dt", {}, "serial"), h("dd", {}, hw.serial || "—"),
    h("dt", {}, "CPUs"), h("dd", {}, hw.cpus),
    h("dt", {}, "memory"), h("dd", {}, gib(hw.memory_bytes)),
    h("dt", {}, "disks"), h("dd", {}, hw.disks.map((d) => d.name + " " + gib(d.size_bytes)).join(", ") || "—"),
    h("dt", {}, "NICs"), h("dd", {}, hw.nics.map((n) => n.name + " " + n.mac).join(", ") || "—"));
}

async function machinePage(uuid) {
  const machine = await api("/v1/machines/" + encodeURIComponent(uuid));
  crumbs(h("a", { href: "#/" }, "racks"), h("span", {}, machine.rack), h("span", {}, machine.uuid));
  let projects = [], networks = [];
  if (allocating === machine.uuid) [projects, networks] = await Promise.all([api("/v1/projects"), api("/v1/networks")]);
  return [
    h("h1", {}, machine.hostname || machine.uuid, " ", stateBadge(machine.state)),
    h("dl", {},
      h("dt", {}, "uuid"), h("dd", {}, machine.uuid),
      h("dt", {}, "switch port"), h("dd", {}, h("a", { href: "#/switch/" + machine.switch }, machine.switch), " " + (machine.port || "")),
      h("dt", {}, "liveliness"), h("dd", { class: "live-" + machine.liveliness }, machine.liveliness),
      h("dt", {}, "size"), h("dd", {}, machine.size || "—"),
      h("dt", {}, "allocation"), h("dd", {}, machine.project
        ? [machine.project, machine.network, machine.ip, machine.image].filter(Boolean).join(" · ")
        : "free"),
      h("dt", {}, "flags"), h("dd", {}, machine.flags.join(", ") || "—"),
      h("dt", {}, "reservation"), h("dd", {}, machine.reservation ? JSON.stringify(machine.reservation) : "—")),
    h("p", {}, controls(machine)),
    allocating === machine.uuid ? allocateForm(machine, projects, networks) : null,
    h("h2", {}, "Hardware"), hardware(machine.hardware),
    h("h2", {}, "Events"),
    h("ol", { class: "timeline" }, machine.events.map((e) =>
      h("li", {}, h("time", { datetime: new Date(e.time).toISOString() }, new Date(e.time).toLocaleString()),
        " ", stateBadge(e.kind), " ", e.message))),
  ];
}

async function switchPage(name) {
  const sw = await api("/v1/switches/" + encodeURIComponent(name));
  crumbs(h("a", { href: "#/" }, "racks"), h("span", {}, sw.rack), h("span", {}, sw.name));
  return [
    h("h1", {}, sw.name),
    h("dl", {},
      h("dt", {}, "partition / rack"), h("dd", {}, sw.partition + " / " + sw.rack),
      h("dt", {}, "loopback"), h("dd", {}, sw.loopback),
      h("dt", {}, "ASN"), h("dd", {}, sw.asn)),
    h("h2", {}, "BGP sessions"),
    sw.bgp_sessions.length
      ? h("table", { class: "bgp" }, h("thead", {}, h("tr", {}, ["peer", "state", "remote AS", "paths received"].map((c) => h("th", {}, c)))),
        h("tbody", {}, sw.bgp_sessions.map((s) => h("tr", {}, h("td", {}, s.peer), h("td", {}, s.state), h("td", {}, s.remote_as ?? "—"), h("td", {}, s.received)))))
      : h("p", { class: "muted" }, "none published (FRR speaks BGP on this switch, or the speaker is starting)"),
    h("h2", {}, "Ports"),
    h("table", { class: "ports" }, h("thead", {}, h("tr", {}, ["port", "up", "LLDP neighbours", "machine"].map((c) => h("th", {}, c)))),
      h("tbody", {}, sw.ports.map((p) => h("tr", {},
        h("td", {}, p.name), h("td", {}, p.up ? "up" : "down"), h("td", {}, p.neighbors.join(", ") || "—"),
        h("td", {}, p.machine ? h("a", { href: "#/machine/" + p.machine }, p.machine) : "—"))))),
  ];
}

async function refresh() {
  clearTimeout(timer);
  if (!token()) { showLogin(); return; }
  // A form being filled in is not replaced under the user's hands.
  const active = document.activeElement;
  if (active && active.closest && active.closest("form.allocate") && allocating) {
    timer = setTimeout(refresh, POLL_MS);
    return;
  }
  const route = location.hash.replace(/^#\/?/, "").split("/");
  // An answer fetched with a token since replaced is not shown.
  const asked = token();
  const current = () => token() === asked;
  try {
    if (!who) {
      const me = await api("/v1/whoami");
      if (!current()) return;
      who = me;
      document.getElementById("who").textContent = who.subject + " (" + who.role + ")";
      document.getElementById("logout").hidden = false;
      document.getElementById("login").hidden = true;
    }
    let content;
    if (route[0] === "machine" && route[1]) content = await machinePage(decodeURIComponent(route[1]));
    else if (route[0] === "switch" && route[1]) content = await switchPage(decodeURIComponent(route[1]));
    else content = await overview();
    if (!current()) return;
    const view = document.getElementById("view");
    view.replaceChildren(...content.filter(Boolean));
    view.dataset.subject = who.subject;
    status("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    if (e.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      who = null;
      showLogin("The token was refused: " + e.message);
      return;
    }
    status(e.message, true);
  }
  timer = setTimeout(refresh, POLL_MS);
}

// `metalmesh web` hands the token over in the fragment, which browsers
// never send to a server; it is moved to session storage at once.
function takeToken() {
  const match = location.hash.match(/^#token=([^&]+)/);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  who = null;
  history.replaceState(null, "", location.pathname + "#/");
}

function start() {
  takeToken();
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    document.getElementById("token").value = "";
    who = null;
    refresh();
  });
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    who = null;
    showLogin();
  });
  window.addEventListener("hashchange", () => {
    takeToken();
    allocating = null;
    refresh();
  });
  refresh();
}

start();
