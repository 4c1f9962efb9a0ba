// The operations dashboard: one page over the REST API, updated live from the
// Server-Sent Events of /api/dashboard/stream (no polling loop: every refresh below is
// triggered by an event, and coalesced).
import "leaflet/dist/leaflet.css";
import "./style.css";
import L from "leaflet";
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from "chart.js";

Chart.register(
  BarController,
  BarElement,
  CategoryScale,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
);

const $ = (id) => document.getElementById(id);
const COLOURS = { active: "#1a9850", maintenance: "#f4a11d", offline: "#8c8c8c" };
const TOKEN_KEY = "vendflow-token";

// ---------------------------------------------------------------- the token and the API

function takeTokenFromUrl() {
  // The demo prints http://…/#token=vf_…: keep it for this tab, then drop it from the URL.
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

async function sql(text) {
  const answer = await api("/sql", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sql: text }),
  });
  return answer.rows || [];
}

const quote = (s) => `'${String(s).replaceAll("'", "''")}'`;
const region = () => $("region").value;
const withRegion = (path) => (region() ? `${path}?region=${encodeURIComponent(region())}` : path);

function problem(error) {
  if (error instanceof ApiError && error.status === 401) {
    signIn("That token is not valid (any more): paste another.");
    return;
  }
  $("problem").hidden = false;
  $("problem").textContent = String(error.message || error);
}

function clearProblem() {
  $("problem").hidden = true;
}

// ---------------------------------------------------------------- coalesced refreshes

// Runs `fn` at most once per `ms`, after the last of a burst of calls.
function coalesce(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      try {
        await fn();
      } catch (e) {
        problem(e);
      }
    }, ms);
  };
}

// ---------------------------------------------------------------- fleet page

const money = (s) => `$${Number(s).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
let map = null;
let markers = new Map(); // machineId -> {marker, status, alerts}
let revenueChart = null;
let lastTicker = null;

function machineLink(id) {
  const a = document.createElement("a");
  a.href = `#/machines/${encodeURIComponent(id)}`;
  a.textContent = id;
  return a;
}

function listItem(id, text) {
  const li = document.createElement("li");
  li.append(machineLink(id), document.createTextNode(` ${text}`));
  return li;
}

// A list's items, or one line saying there are none.
function fill(list, items, none) {
  if (items.length) {
    list.replaceChildren(...items);
  } else {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = none;
    list.replaceChildren(li);
  }
}

function setTicker(value) {
  const el = $("revenue-ticker");
  el.textContent = money(value);
  el.dataset.value = value;
  if (lastTicker !== null && value !== lastTicker) {
    el.classList.remove("moved");
    void el.offsetWidth; // restart the animation
    el.classList.add("moved");
  }
  lastTicker = value;
}

async function loadSummary() {
  const f = await api(withRegion("/api/dashboard/fleet"));
  clearProblem();
  for (const k of ["total", "active", "maintenance", "offline"]) {
    $(`count-${k}`).textContent = f.totals[k].toLocaleString("en-US");
  }
  $("count-alerts").textContent = f.alertCount.toLocaleString("en-US");
  $("revenue-day").textContent = f.day || "";
  setTicker(f.todayRevenue);
  $("clock").textContent = f.time ? `views at ${new Date(f.time).toISOString().slice(0, 19).replace("T", " ")} UTC` : "";
  $("low-stock-count").textContent = `${f.lowStockMachines} machines`;
  fill(
    $("low-stock"),
    f.lowStock.map((m) => listItem(m.machineId, `${m.lowSlots} low, ${m.soldOutSlots} sold out`)),
    "no slot is low",
  );
  fill(
    $("needs-restock"),
    f.needsRestock.map((m) =>
      listItem(m.machineId, `slots ${m.slots}; first empty in ${Number(m.hoursToFirstEmpty).toFixed(1)} h`),
    ),
    "no machine runs out within the forecast horizon",
  );
  fill(
    $("maintenance"),
    (f.maintenance || []).map((m) =>
      listItem(
        m.machineId,
        `${Math.round(100 * m.failureProbability)} %${m.flagged ? " (flagged)" : ""}: ${m.reasons.join("; ") || "several small deviations"}`,
      ),
    ),
    "no machine's signals point to a failure",
  );
  fill(
    $("top-machines"),
    f.topPerforming.map((m) => listItem(m.machineId, money(m.revenue))),
    "no sales yet today",
  );
}

function markerStyle(status, alerts) {
  return {
    radius: alerts > 0 ? 7 : 5,
    color: alerts > 0 ? "#d7191c" : COLOURS[status] || "#555",
    weight: alerts > 0 ? 3 : 1,
    fillColor: COLOURS[status] || "#555",
    fillOpacity: 0.85,
  };
}

// Builds the map on the first call (and after a region change); later calls, triggered by
// stream events, recolour the markers in place, add new machines and drop gone ones.
async function loadMap(fit = false) {
  const m = await api(withRegion("/api/dashboard/map"));
  if (!map) {
    // No tile layer: the machines' coordinates on a plain background, so the page needs no
    // outside network (operators can run it on a closed network).
    map = L.map("map", { preferCanvas: true, attributionControl: false });
  }
  const seen = new Set();
  const points = [];
  for (const [id, , lat, lng, status, alerts] of m.machines) {
    if (lat === null || lng === null) continue;
    seen.add(id);
    points.push([lat, lng]);
    const label = `${id}: ${status}${alerts ? `, ${alerts} alert(s)` : ""}`;
    const known = markers.get(id);
    if (known) {
      Object.assign(known, { status, alerts });
      known.marker.setStyle(markerStyle(status, alerts)).setTooltipContent(label);
      continue;
    }
    const marker = L.circleMarker([lat, lng], markerStyle(status, alerts))
      .bindTooltip(label)
      .on("click", () => (location.hash = `#/machines/${encodeURIComponent(id)}`))
      .addTo(map);
    markers.set(id, { marker, status, alerts });
  }
  for (const [id, { marker }] of markers) {
    if (!seen.has(id)) {
      marker.remove();
      markers.delete(id);
    }
  }
  $("map").dataset.machines = String(markers.size);
  if (fit) {
    if (points.length) map.fitBounds(points, { padding: [20, 20], maxZoom: 12 });
    else map.setView([0, 0], 2);
    fill(
      $("alerts-feed"),
      m.alerts.slice(0, 30).map((a) => feedItem(a.machineId, a.alerts.join(", "), null)),
      "no alerts",
    );
  }
}

// ---------------------------------------------------------------- restock routes

let routeLayer = null;

// A crew's colour, the same at every reload.
function crewColour(crew) {
  let h = 0;
  for (const c of crew) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h}, 70%, 40%)`;
}

// Opens a crew's sheet (the page, or the CSV as a download): fetched with the token, as the
// API needs it in a header.
async function openSheet(crew, csv) {
  const path = `/api/routes/${encodeURIComponent(crew)}/sheet${csv ? ".csv" : ""}`;
  const response = await fetch(path, { headers: token() ? { Authorization: `Bearer ${token()}` } : {} });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const url = URL.createObjectURL(await response.blob());
  if (csv) {
    const a = document.createElement("a");
    a.href = url;
    a.download = `route-${crew}.csv`;
    a.click();
  } else {
    window.open(url, "_blank");
  }
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function sheetLink(crew, label, csv) {
  const a = document.createElement("a");
  a.href = "#/";
  a.textContent = label;
  a.addEventListener("click", (e) => {
    e.preventDefault();
    openSheet(crew, csv).catch(problem);
  });
  return a;
}

// The restock plan on the map (one line per crew: depot, stops in order, depot) and as a list.
async function loadRoutes() {
  const plan = await api(withRegion("/api/routes"));
  if (plan.message) {
    // No planner on this server, or no plan yet.
    $("routes-count").textContent = "";
    fill($("routes"), [], plan.message);
    return;
  }
  if (!map) return;
  if (routeLayer) routeLayer.remove();
  routeLayer = L.layerGroup().addTo(map);
  const items = [];
  for (const c of plan.crews) {
    const line = [[c.depotLat, c.depotLng], ...c.stops.map((s) => [s.lat, s.lng]), [c.depotLat, c.depotLng]];
    L.polyline(line, { color: crewColour(c.crew), weight: 2, opacity: 0.8 })
      .bindTooltip(`${c.crew}: ${c.stops.length} stops, ${c.distanceKm} km, back ${c.back.slice(11, 16)}`)
      .addTo(routeLayer);
    L.circleMarker([c.depotLat, c.depotLng], { radius: 6, color: "#333", fillColor: "#fff", fillOpacity: 1 })
      .bindTooltip(`depot ${c.region}`)
      .addTo(routeLayer);
    const li = document.createElement("li");
    const urgent = c.stops.filter((s) => s.urgent).length;
    li.append(
      document.createTextNode(`${c.crew}: ${c.stops.length} stops (${urgent} urgent), ${c.distanceKm} km · `),
      sheetLink(c.crew, "sheet", false),
      document.createTextNode(" · "),
      sheetLink(c.crew, "csv", true),
    );
    items.push(li);
  }
  $("map").dataset.routes = String(plan.crews.length);
  const left = plan.unassigned.length ? `, ${plan.unassigned.length} machine(s) without a visit` : "";
  $("routes-count").textContent = `shift of ${plan.date}: ${plan.crews.length} crew(s)${left}`;
  fill($("routes"), items, "no machine needs a visit");
}

const refreshRoutes = coalesce(loadRoutes, 30000);

function feedItem(machineId, text, time) {
  const li = document.createElement("li");
  li.className = "alert";
  const when = document.createElement("time");
  // Alerts the page found on loading are "open"; live ones carry the time they came.
  when.textContent = time ? new Date(time).toISOString().slice(11, 19) : "open";
  li.append(when, " ", machineLink(machineId), document.createTextNode(`: ${text}`));
  return li;
}

async function loadRevenueChart() {
  const rows = await sql(
    "SELECT CAST(date_part('hour', hour) AS INT) AS h, CAST(SUM(revenue) AS DOUBLE) AS revenue " +
      "FROM revenue_location_hourly GROUP BY 1 ORDER BY 1",
  );
  const byHour = new Array(24).fill(0);
  for (const r of rows) byHour[r.h] = r.revenue;
  const labels = byHour.map((_, h) => `${String(h).padStart(2, "0")}:00`);
  if (!revenueChart) {
    revenueChart = new Chart($("revenue-chart"), {
      type: "bar",
      data: { labels, datasets: [{ label: "revenue ($)", data: byHour, backgroundColor: "#2c7bb6" }] },
      options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } } },
    });
  } else {
    revenueChart.data.datasets[0].data = byHour;
    revenueChart.update();
  }
}

const refreshSummary = coalesce(loadSummary, 1000);
const refreshChart = coalesce(loadRevenueChart, 3000);
const refreshMap = coalesce(() => loadMap(false), 3000);

// ---------------------------------------------------------------- machine page

let inventoryChart = null;
let temperatureChart = null;
let shownMachine = null;

async function loadMachine(id) {
  const m = await api(`/api/machines/${encodeURIComponent(id)}`);
  clearProblem();
  $("machine-title").textContent = `${m.machineId} · ${m.model || ""}`;
  $("machine-title").dataset.status = m.status;
  const facts = [
    `status ${m.status}`,
    m.location ? `${m.location.address} (${m.location.region || "no region"})` : "no location",
    m.lastHeartbeat ? `last heartbeat ${m.lastHeartbeat}` : "never heard from",
    m.temperature !== null && m.temperature !== undefined ? `${m.temperature} °C` : "no temperature yet",
  ];
  $("machine-facts").textContent = facts.join(" · ");
  $("machine-alerts").replaceChildren(
    ...(m.alerts.length ? m.alerts : ["no alerts"]).map((a) => {
      const li = document.createElement("li");
      li.textContent = a;
      if (m.alerts.length) li.className = "alert";
      return li;
    }),
  );
  const slots = m.inventory;
  const inventory = {
    labels: slots.map((s) => `${s.slotNumber} ${s.productId ?? ""}`),
    datasets: [
      {
        label: "units",
        data: slots.map((s) => Number(s.units)),
        backgroundColor: slots.map((s) => (s.soldOut ? "#d7191c" : s.lowStock ? "#f4a11d" : "#1a9850")),
      },
      { label: "capacity", data: slots.map((s) => Number(s.capacity)), backgroundColor: "#e0e0e0" },
    ],
  };
  if (inventoryChart) inventoryChart.destroy();
  inventoryChart = new Chart($("inventory-chart"), {
    type: "bar",
    data: inventory,
    options: {
      indexAxis: "y",
      animation: false,
      maintainAspectRatio: false,
      scales: { x: { beginAtZero: true }, y: { stacked: true, ticks: { autoSkip: false } } },
      datasets: { bar: { grouped: false } },
    },
  });
  const windows = await sql(
    "SELECT CAST(window_start AS VARCHAR) AS w, CAST(max_temperature AS DOUBLE) AS max, " +
      "avg_temperature AS avg FROM anomaly_windows " +
      `WHERE machine_id = ${quote(id)} AND max_temperature IS NOT NULL ORDER BY window_start`,
  );
  const temperature = {
    labels: windows.map((w) => String(w.w).slice(11, 16)),
    datasets: [
      { label: "max", data: windows.map((w) => w.max), borderColor: "#d7191c", pointRadius: 1 },
      { label: "average", data: windows.map((w) => w.avg), borderColor: "#2c7bb6", pointRadius: 1 },
      { label: "critical above 8 °C", data: windows.map(() => 8), borderColor: "#999", borderDash: [4, 4], pointRadius: 0 },
    ],
  };
  if (temperatureChart) temperatureChart.destroy();
  temperatureChart = new Chart($("temperature-chart"), {
    type: "line",
    data: temperature,
    options: { animation: false, maintainAspectRatio: false },
  });
  $("temperature-chart").dataset.windows = String(windows.length);
  $("temperature-chart").dataset.max = String(Math.max(...windows.map((w) => w.max)));
}

const refreshMachine = coalesce(() => (shownMachine ? loadMachine(shownMachine) : null), 1000);

// ---------------------------------------------------------------- live stream

let stream = null;

// A machine's status or alerts changed: recolour its marker now, re-read the rest soon.
function machineChanged(machineId, change) {
  const m = markers.get(machineId);
  if (m) {
    Object.assign(m, change);
    m.marker.setStyle(markerStyle(m.status, m.alerts));
  }
  refreshSummary();
  refreshMap();
  refreshRoutes();
  if (machineId === shownMachine) refreshMachine();
}

function connect() {
  if (stream) stream.close();
  const params = new URLSearchParams();
  if (token()) params.set("access_token", token());
  if (region()) params.set("region", region());
  stream = new EventSource(`/api/dashboard/stream?${params}`);
  const live = $("live");
  stream.addEventListener("hello", () => {
    live.dataset.state = "live";
    live.textContent = "live";
  });
  stream.onerror = () => {
    // EventSource reconnects by itself; say so meanwhile.
    live.dataset.state = "reconnecting";
    live.textContent = "reconnecting…";
  };
  stream.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    machineChanged(s.machineId, { status: s.status });
  });
  stream.addEventListener("alert", (e) => {
    const a = JSON.parse(e.data);
    $("alerts-feed").querySelector(".none")?.remove();
    $("alerts-feed").prepend(feedItem(a.machineId, a.new.join(", "), a.time));
    while ($("alerts-feed").children.length > 50) $("alerts-feed").lastChild.remove();
    machineChanged(a.machineId, { alerts: a.alerts.length });
  });
  stream.addEventListener("revenue", (e) => {
    const r = JSON.parse(e.data);
    setTicker(r.todayRevenue);
    refreshChart();
    refreshSummary();
  });
  stream.addEventListener("error", (e) => {
    // A server-sent `error` event (the stream was cut off): open a new one.
    if (e.data) setTimeout(connect, 1000);
  });
}

// ---------------------------------------------------------------- pages

function signIn(message) {
  $("fleet").hidden = true;
  $("machine").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  if (stream) stream.close();
}

async function route() {
  const m = location.hash.match(/^#\/machines\/(.+)$/);
  try {
    if (m) {
      shownMachine = decodeURIComponent(m[1]);
      $("fleet").hidden = true;
      $("machine").hidden = false;
      await loadMachine(shownMachine);
    } else {
      shownMachine = null;
      $("machine").hidden = true;
      $("fleet").hidden = false;
      await Promise.all([loadSummary(), loadMap(true), loadRevenueChart()]);
      map.invalidateSize();
      await loadRoutes();
    }
  } catch (e) {
    problem(e);
  }
}

async function start() {
  takeTokenFromUrl();
  try {
    const me = await api("/api/whoami");
    $("signout").hidden = !token();
    $("signout").title = `${me.role}, tenant ${me.tenant}`;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      signIn(token() ? "That token is not valid: paste another." : "");
      return;
    }
    problem(e);
    return;
  }
  $("signin").hidden = true;
  connect();
  await route();
}

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  start();
});
$("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  signIn("");
});
$("region").addEventListener("change", () => {
  connect();
  route();
});
window.addEventListener("hashchange", route);
start();
