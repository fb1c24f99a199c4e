// The Cairn console: one page, routed by the URL's hash, talking to /console/api.
// Everything on the page is built with DOM calls (never from HTML text), so values
// from profiles and events are shown as text, whatever they hold.
"use strict";

const OPS = [
  ["eq", "=="], ["ne", "!="], ["lt", "<"], ["le", "<="], ["gt", ">"], ["ge", ">="],
];
const ATTRIBUTE_OPS = OPS.concat([
  ["exists", "exists"], ["in", "in"], ["intersects", "intersects"],
  ["contains", "contains"], ["like", "like"], ["between", "between"],
]);
const BEHAVIOUR = /^event_count\.([^.]+)\.([^.]+)$/;

const session = { role: null, canWrite: false, schema: null, generation: 0 };

// A page whose route was left before it finished loading renders nothing.
class Stale extends Error {}

// ---------------------------------------------------------------- helpers

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "value") node.value = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attributes, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Replaces what `container` holds with `children` (nested lists flattened, nothing
// for null).
function fill(container, ...children) {
  container.replaceChildren(...children.flat(Infinity)
    .filter((child) => child !== undefined && child !== null && child !== false)
    .map((child) => child instanceof Node ? child : document.createTextNode(String(child))));
}

class ApiError extends Error {
  constructor(status, data) {
    super((data && data.error) || "HTTP " + status);
    this.status = status;
    this.data = data;
  }
}

async function api(method, path, body) {
  const options = { method, headers: { "x-cairn-console": "1" }, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/console/api/" + path, options);
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (_) { data = null; }
  }
  if (response.status === 401 && path !== "login") showLogin();
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function page(generation, title, ...children) {
  if (generation !== session.generation) throw new Stale();
  const section = document.getElementById("page");
  fill(section, el("h1", { id: "page-title" }, title), children);
  section.setAttribute("aria-labelledby", "page-title");
  section.hidden = false;
  document.getElementById("login").hidden = true;
  document.title = title + " · Cairn console";
  return section;
}

function failure(err) {
  return el("p", { class: "error", role: "alert" }, err.message);
}

function number(value) {
  return typeof value === "number" ? value.toLocaleString("en") : "—";
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((header) =>
      el("th", { scope: "col", class: header.num ? "num" : null }, header.label || header)))),
    el("tbody", {}, rows));
}

// ---------------------------------------------------------------- sign-in

function showLogin() {
  stopLive();
  document.getElementById("page").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("logout").hidden = true;
  document.getElementById("whoami").textContent = "";
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    await api("POST", "login", { token: document.getElementById("token").value });
    document.getElementById("token").value = "";
    await start();
  } catch (err) {
    error.textContent = err.message;
  }
}

async function signOut() {
  try { await api("POST", "logout"); } finally { showLogin(); }
}

async function start() {
  const me = await api("GET", "me");
  session.role = me.role;
  session.canWrite = me.can_write;
  session.schema = null;
  document.getElementById("whoami").textContent = "signed in · " + me.role;
  document.getElementById("logout").hidden = false;
  await route();
}

async function schema() {
  if (!session.schema) session.schema = await api("GET", "schema");
  return session.schema;
}

// ---------------------------------------------------------------- routing

// Routes are hashes starting with "#/"; other hashes (the skip link) are in-page links.
function isRoute(hash) {
  return hash === "" || hash === "#" || hash.startsWith("#/");
}

async function route() {
  const generation = ++session.generation;
  const hash = isRoute(location.hash) ? location.hash : "#/segments";
  let parts;
  try {
    parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  } catch (_) {
    parts = ["not-found"];
  }
  const name = parts[0] || "segments";
  for (const link of document.querySelectorAll("header nav a")) {
    const current = link.getAttribute("href") === "#/" + name;
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (name === "segments") await segmentsPage();
    else if (name === "builder") await builderPage(parts[1] || "");
    else if (name === "profiles") await profilesPage(parts[1] || "email", parts[2] || "", parts[3] || "");
    else if (name === "campaigns") await campaignsPage();
    else if (name === "live") await livePage();
    else page(generation, "Not found", el("p", {}, "There is no page ", name, "."));
  } catch (err) {
    if (err instanceof Stale || generation !== session.generation) return;
    if (err.status !== 401) page(generation, "Something went wrong", failure(err));
  }
  document.getElementById("main").focus();
}

// ---------------------------------------------------------------- segments

async function segmentsPage() {
  const generation = session.generation;
  const segments = await api("GET", "segments");
  const rows = segments.map((segment) => el("tr", {},
    el("td", {}, el("a", { href: "#/builder/" + encodeURIComponent(segment.name) }, segment.name),
      segment.description ? el("div", { class: "hint" }, segment.description) : null),
    el("td", { class: "num" }, segment.size === null ? "unknown" : number(segment.size)),
    el("td", { class: "num" }, number(segment.entered_last_hour)),
    el("td", { class: "num" }, number(segment.exited_last_hour)),
    el("td", {}, el("pre", {}, segment.filter)),
    el("td", {}, el("button", { type: "button", onclick: (event) => showMembers(event.target, segment.name) }, "Members"))));
  page(generation, "Segments",
    el("p", {}, el("a", { href: "#/builder" }, "New segment")),
    segments.length
      ? table(["Segment", { label: "Size", num: true }, { label: "Entered (1 h)", num: true },
        { label: "Exited (1 h)", num: true }, "FilterQL", ""], rows)
      : el("p", {}, "No segments yet."),
    el("p", { class: "hint" }, "Entered and exited count what the console saw in the last hour since it started."));
}

async function showMembers(button, name) {
  const cell = button.parentElement;
  let members;
  try {
    members = await api("GET", "segments/" + encodeURIComponent(name) + "/members?limit=20");
  } catch (err) {
    fill(cell, failure(err));
    return;
  }
  fill(cell, el("ul", { "aria-label": "Members of " + name }, members.length
    ? members.map((member) => el("li", {}, el("a", { href: "#/profiles/id/" + encodeURIComponent(member.profile_id) + "/" + encodeURIComponent(name) }, member.profile_id)))
    : el("li", {}, "none")));
}

// ---------------------------------------------------------------- builder model
//
// The builder edits a tree of groups (AND/OR, possibly negated) and conditions
// (attribute, behaviour or segment, possibly negated). It is made from FilterQL's own
// tree (/filterql/parse) and turned back into it (/filterql/print), so the text and the
// builder always say the same thing.

function fieldType(field) {
  const known = (session.schema.fields || []).find((candidate) => candidate.name === field);
  if (known) return known.type;
  if (/^(event_count\.|referrer_domains\.)/.test(field)) return "number";
  if (/^(event_last\.|segments\.)/.test(field)) return "time";
  return "any";
}

function quote(text) {
  return '"' + text.replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';
}

function unquote(text) {
  return text.slice(1, -1).replace(/\\(.)/g, "$1");
}

function literal(text, type) {
  const value = String(text).trim();
  if (/^"(?:[^"\\]|\\.)*"$/s.test(value)) return { text: unquote(value) };
  if (type === "text" || type === "time") return { text: value };
  if (/^-?\d+$/.test(value) && Number.isSafeInteger(Number(value))) return { int: Number(value) };
  if (/^-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$/.test(value)) return { float: Number(value) };
  if (type !== "number" && (value === "true" || value === "false")) return { bool: value === "true" };
  return { text: value };
}

// How a literal is written in a value input: text as it is, unless reading it back
// would give something else (a number, a bool, quotes, spaces at the ends, or, in a
// list, a comma), then quoted.
function literalText(value, type, inList) {
  if ("text" in value) {
    const text = value.text;
    const ambiguous = /^-?[\d.]+([eE][-+]?\d+)?$|^(true|false)$/.test(text) && type !== "text" && type !== "time";
    const unsafe = /^"|^\s|\s$/.test(text) || (inList && (text === "" || /[",]/.test(text)));
    return ambiguous || unsafe ? quote(text) : text;
  }
  if ("int" in value) return String(value.int);
  if ("float" in value) return String(value.float);
  return String(value.bool);
}

let nodeIds = 0;

function group(op, children, negate) {
  return { type: "group", id: ++nodeIds, op, negate: !!negate, children };
}

function condition(kind, fields) {
  return Object.assign({ type: "condition", id: ++nodeIds, kind, negate: false, field: "", op: "eq",
    value: "", value2: "", event: "", window: "30d", segment: "", original: null }, fields);
}

function toModel(expr, negate) {
  if (expr.and) return group("and", expr.and.map((part) => toModel(part, false)), negate);
  if (expr.or) return group("or", expr.or.map((part) => toModel(part, false)), negate);
  if (expr.not) return toModel(expr.not, !negate);
  let made;
  if ("include" in expr) made = condition("segment", { segment: expr.include });
  else if ("exists" in expr) made = condition("attribute", { field: expr.exists, op: "exists" });
  else if (expr.compare) {
    const { field, op, value } = expr.compare;
    const behaviour = BEHAVIOUR.exec(field);
    made = behaviour
      ? condition("behaviour", { event: behaviour[1], window: behaviour[2], op, value: literalText(value, "number") })
      : condition("attribute", { field, op, value: literalText(value, fieldType(field)) });
    made.original = { literals: { value } };
  } else {
    const [op, body] = Object.entries(expr)[0];
    const type = fieldType(body.field);
    made = condition("attribute", { field: body.field, op });
    made.original = { literals: {} };
    if (op === "in" || op === "intersects") {
      made.value = body.values.map((value) => literalText(value, type, true)).join(", ");
      made.original.literals.value = body.values;
    } else if (op === "contains") {
      made.value = literalText(body.value, type);
      made.original.literals.value = body.value;
    } else if (op === "like") made.value = body.pattern;
    else if (op === "between") {
      made.value = literalText(body.low, type);
      made.value2 = literalText(body.high, type);
      made.original.literals = { value: body.low, value2: body.high };
    }
  }
  // What was read from the text, to give back as it was while the condition is unedited.
  if (made.original) Object.assign(made.original, { kind: made.kind, field: made.field, op: made.op, event: made.event,
    window: made.window, value: made.value, value2: made.value2 });
  made.negate = !!negate;
  return made;
}

// "a, \"b, c\", 3" → three values; quoted parts keep their commas.
function splitValues(text, type) {
  const values = [];
  for (const match of text.matchAll(/\s*("(?:[^"\\]|\\.)*"|[^,]*?)\s*(?:,|$)/gs)) {
    if (match[1] !== "") values.push(literal(match[1], type));
    if (match.index + match[0].length >= text.length) break;
  }
  return values;
}

// The literal(s) read from the text for `key`, while the condition is as it was read;
// else what the input says now.
function kept(node, key, fresh) {
  const original = node.original;
  const unchanged = original && ["kind", "field", "op", "event", "window", "value", "value2"]
    .every((name) => original[name] === node[name]);
  return unchanged && key in original.literals ? original.literals[key] : fresh();
}

function conditionExpr(node) {
  if (node.kind === "segment") return { include: node.segment };
  if (node.kind === "behaviour") {
    return { compare: { field: "event_count." + node.event + "." + node.window, op: node.op,
      value: kept(node, "value", () => literal(node.value, "number")) } };
  }
  const type = fieldType(node.field);
  const value = () => kept(node, "value", () => literal(node.value, type));
  const values = () => kept(node, "value", () => splitValues(node.value, type));
  switch (node.op) {
    case "exists": return { exists: node.field };
    case "in": return { in: { field: node.field, values: values() } };
    case "intersects": return { intersects: { field: node.field, values: values() } };
    case "contains": return { contains: { field: node.field, value: value() } };
    case "like": return { like: { field: node.field, pattern: node.value } };
    case "between": return { between: { field: node.field, low: value(),
      high: kept(node, "value2", () => literal(node.value2, type)) } };
    default: return { compare: { field: node.field, op: node.op, value: value() } };
  }
}

function toExpr(node) {
  const expr = node.type === "group" ? { [node.op]: node.children.map(toExpr) } : conditionExpr(node);
  return node.negate ? { not: expr } : expr;
}

// ---------------------------------------------------------------- builder page

async function builderPage(editing) {
  const generation = session.generation;
  await schema();
  const state = {
    base: { from: null, limit: null, with: [], alias: null },
    root: group("and", [], false),
    editingText: false,
  };
  const nameInput = el("input", { id: "segment-name", type: "text", required: true, value: editing, "aria-describedby": "name-hint" });
  const description = el("input", { id: "segment-description", type: "text", size: 50 });
  const text = el("textarea", { id: "filterql", rows: 10, spellcheck: "false", "aria-describedby": "problems" });
  const builder = el("div", { id: "builder", role: "group", "aria-label": "Conditions" });
  const problems = el("ul", { id: "problems", class: "problems", "aria-live": "polite" });
  const status = el("p", { id: "check-status", "aria-live": "polite" });
  const size = el("p", { id: "estimate", "aria-live": "polite" });
  const sample = el("ul", { id: "sample", "aria-label": "Sample profiles" });
  const saveButton = el("button", { id: "save", type: "submit", class: "primary", disabled: !session.canWrite }, "Save segment");
  const saveStatus = el("p", { id: "save-status", role: "status" });

  // Rebuilds the builder, keeping the keyboard focus on the same control.
  const render = () => {
    const focused = document.activeElement && builder.contains(document.activeElement)
      ? document.activeElement.getAttribute("data-key") : null;
    fill(builder, renderGroup(state.root, null, changed, render));
    const again = focused && [...builder.querySelectorAll("[data-key]")].find((node) => node.getAttribute("data-key") === focused);
    if (again) again.focus();
  };

  // Each request's answer is used only if no newer request of its kind was made.
  const latest = { check: 0, print: 0, parse: 0 };

  const validate = debounce(async (filter) => {
    const mine = ++latest.check;
    fill(problems);
    size.textContent = "";
    fill(sample);
    if (!filter.trim()) {
      status.textContent = "Add a condition.";
      return;
    }
    status.textContent = "Checking…";
    try {
      const checked = await api("POST", "segments/check", { filter, name: nameInput.value });
      if (mine !== latest.check) return;
      if (checked.problems.length) {
        status.textContent = "This segment cannot be saved yet:";
        status.className = "error";
        fill(problems, ...checked.problems.map((problem) =>
          el("li", {}, problem.line ? "line " + problem.line + ", column " + problem.column + ": " + problem.message : problem.message)));
        return;
      }
      status.textContent = "The filter checks out.";
      status.className = "ok";
      const preview = await api("POST", "segments/preview", { filter, name: nameInput.value });
      if (mine !== latest.check) return;
      const share = preview.fraction >= 1 ? "all " + number(preview.evaluated) + " profiles"
        : number(preview.evaluated) + " profiles (" + Math.round(preview.fraction * 100) + "% of them)";
      fill(size, "Estimated size: ", el("strong", { id: "estimated-size" }, number(preview.estimated_size)),
        " — ", number(preview.matched), " matched of ", share, ".");
      fill(sample, ...preview.sample.map((id) =>
        el("li", {}, el("a", { href: "#/profiles/id/" + encodeURIComponent(id) }, id))));
    } catch (err) {
      if (mine !== latest.check) return;
      status.textContent = err.message;
      status.className = "error";
    }
  }, 250);

  // Writes the builder's FilterQL into the text, then checks it.
  const print = async () => {
    const mine = ++latest.print;
    state.dirty = false;
    try {
      if (!state.root.children.length && state.root.type === "group") {
        text.value = "";
        validate("");
        return;
      }
      const root = state.root;
      const expr = !root.negate && root.children.length === 1 ? toExpr(root.children[0]) : toExpr(root);
      const printed = await api("POST", "filterql/print", { tree: Object.assign({}, state.base, { expr }) });
      if (mine !== latest.print) return;
      if (!state.editingText) text.value = printed.text;
      validate(printed.text);
    } catch (err) {
      if (mine !== latest.print) return;
      status.textContent = err.message;
      status.className = "error";
    }
  };
  const printSoon = debounce(() => { state.printing = print(); }, 150);
  // The builder changed.
  const changed = () => {
    state.dirty = true;
    printSoon();
  };

  // The text changed: rebuild the builder from it.
  const typed = debounce(async () => {
    const mine = ++latest.parse;
    try {
      const parsed = await api("POST", "filterql/parse", { text: text.value });
      if (mine !== latest.parse) return;
      state.base = Object.assign({}, parsed.tree, { expr: undefined });
      const model = toModel(parsed.tree.expr, false);
      state.root = model.type === "group" ? model : group("and", [model], false);
      render();
      validate(text.value);
    } catch (err) {
      if (mine !== latest.parse) return;
      fill(problems);
      size.textContent = "";
      if (err.status === 422 && err.data && err.data.line) {
        status.textContent = "line " + err.data.line + ", column " + err.data.column + ": " + err.data.error;
      } else {
        status.textContent = err.message;
      }
      status.className = "error";
    }
  }, 300);
  text.addEventListener("input", () => typed());
  text.addEventListener("focus", () => { state.editingText = true; });
  text.addEventListener("blur", () => { state.editingText = false; });
  nameInput.addEventListener("input", () => validate(text.value));

  const save = async (event) => {
    event.preventDefault();
    saveStatus.textContent = "";
    if (!nameInput.value.trim()) {
      saveStatus.textContent = "name: give the segment a name";
      saveStatus.className = "error";
      nameInput.focus();
      return;
    }
    try {
      // The builder's last change is in the text first.
      if (state.dirty) await print();
      else if (state.printing) await state.printing;
      const saved = await api("PUT", "segments/" + encodeURIComponent(nameInput.value.trim()),
        { filter: text.value, description: description.value });
      saveStatus.textContent = "Saved " + saved.name + ". It is kept live from now on, and everyone already profiled is being evaluated.";
      saveStatus.className = "ok";
      session.schema = null;
    } catch (err) {
      saveStatus.textContent = err.status === 403 ? "Not saved: " + err.message : err.message;
      saveStatus.className = "error";
    }
  };

  page(generation, editing ? "Segment " + editing : "New segment",
    el("form", { id: "segment-form", onsubmit: save },
      el("div", { class: "card" },
        el("div", { class: "row" },
          el("label", { for: "segment-name" }, "Name"), nameInput,
          el("label", { for: "segment-description" }, "Description"), description),
        el("p", { id: "name-hint", class: "hint" },
          "Segments are live: every profile change re-evaluates the ones it can affect, and saving evaluates everyone already profiled (batch).")),
      el("div", { class: "columns builder" },
        el("div", {},
          el("h2", {}, "Conditions"),
          builder),
        el("div", {},
          el("h2", {}, el("label", { for: "filterql" }, "FilterQL")),
          text,
          status, problems,
          el("h2", {}, "Size before saving"),
          size, sample)),
      el("div", { class: "row" }, saveButton,
        session.canWrite ? null : el("span", { class: "hint", id: "read-only" }, "Your token is read-only: you can build and check segments, not save them.")),
      saveStatus));

  if (editing) {
    const segments = await api("GET", "segments");
    const found = segments.find((segment) => segment.name === editing);
    if (found) {
      text.value = found.filter;
      description.value = found.description || "";
      typed();
    }
  } else {
    state.root.children.push(condition("attribute", { field: "visit_count", op: "gt", value: "1" }));
    print();
  }
  render();
}

function select(options, value, label, onchange, key) {
  return el("select", { "aria-label": label, onchange, "data-key": key },
    options.map(([key, text]) => el("option", { value: key, selected: key === value }, text)));
}

function renderGroup(node, parent, changed, render) {
  const remove = () => {
    parent.children.splice(parent.children.indexOf(node), 1);
    render();
    changed();
  };
  const add = (child) => {
    node.children.push(child);
    render();
    changed();
  };
  const box = el("div", { class: "group" + (node.negate ? " negated" : ""), role: "group", "aria-label": (node.negate ? "NOT " : "") + (node.op === "and" ? "all of" : "any of") },
    el("div", { class: "group-head" },
      el("label", {}, el("input", { type: "checkbox", checked: node.negate, "data-key": node.id + ":not", onchange: (event) => { node.negate = event.target.checked; render(); changed(); } }), " NOT"),
      select([["and", "ALL of (AND)"], ["or", "ANY of (OR)"]], node.op, "Combine conditions with",
        (event) => { node.op = event.target.value; render(); changed(); }, node.id + ":op"),
      el("button", { type: "button", "data-key": node.id + ":attribute", onclick: () => add(condition("attribute", { field: "", op: "eq" })) }, "+ Attribute"),
      el("button", { type: "button", "data-key": node.id + ":behaviour", onclick: () => add(condition("behaviour", { event: "", op: "ge", value: "1" })) }, "+ Behaviour"),
      el("button", { type: "button", "data-key": node.id + ":segment", onclick: () => add(condition("segment", { segment: (session.schema.segments || [])[0] || "" })) }, "+ Segment"),
      el("button", { type: "button", "data-key": node.id + ":group", onclick: () => add(group(node.op === "and" ? "or" : "and", [], false)) }, "+ Group"),
      parent ? el("button", { type: "button", "aria-label": "Remove this group", onclick: remove }, "Remove group") : null),
    node.children.map((child) => child.type === "group"
      ? renderGroup(child, node, changed, render)
      : renderCondition(child, node, changed, render)));
  return box;
}

function renderCondition(node, parent, changed, render) {
  const typing = (key) => (event) => { node[key] = event.target.value; changed(); };
  const remove = el("button", { type: "button", "aria-label": "Remove this condition", onclick: () => {
    parent.children.splice(parent.children.indexOf(node), 1);
    render();
    changed();
  } }, "✕");
  const key = (name) => node.id + ":" + name;
  const not = el("label", {}, el("input", { type: "checkbox", checked: node.negate, "data-key": key("not"), onchange: (event) => { node.negate = event.target.checked; changed(); } }), " NOT");
  const kind = select([["attribute", "Attribute"], ["behaviour", "Behaviour"], ["segment", "Segment"]], node.kind, "Condition on",
    (event) => { Object.assign(node, condition(event.target.value, { negate: node.negate }), { id: node.id }); render(); changed(); }, key("kind"));
  let body;
  if (node.kind === "segment") {
    const names = session.schema.segments || [];
    body = [el("span", {}, "is in segment"),
      select(names.map((name) => [name, name]).concat(names.includes(node.segment) || !node.segment ? [] : [[node.segment, node.segment]]),
        node.segment, "Segment", (event) => { node.segment = event.target.value; changed(); }, key("segment"))];
  } else if (node.kind === "behaviour") {
    body = [
      el("span", {}, "count of event"),
      el("input", { type: "text", value: node.event, "aria-label": "Event name", placeholder: "purchase", "data-key": key("event"), oninput: typing("event") }),
      el("span", {}, "in"),
      select((session.schema.windows || []).map((window) => [window, window === "all" ? "all time" : "the last " + window]), node.window, "Window",
        (event) => { node.window = event.target.value; changed(); }, key("window")),
      select(OPS, node.op, "Comparison", (event) => { node.op = event.target.value; changed(); }, key("comparison")),
      el("input", { type: "text", class: "narrow", value: node.value, "aria-label": "Count", inputmode: "numeric", "data-key": key("value"), oninput: typing("value") }),
    ];
  } else {
    const list = "fields-" + node.id;
    body = [
      el("input", { type: "text", value: node.field, "aria-label": "Field", placeholder: "traits.plan", list, "data-key": key("field"), oninput: typing("field") }),
      el("datalist", { id: list }, (session.schema.fields || []).map((field) => el("option", { value: field.name }, field.type))),
      select(ATTRIBUTE_OPS, node.op, "Operator", (event) => { node.op = event.target.value; render(); changed(); }, key("operator")),
    ];
    if (node.op !== "exists") {
      body.push(el("input", { type: "text", value: node.value, "aria-label": node.op === "between" ? "From" : "Value",
        placeholder: node.op === "in" || node.op === "intersects" ? "a, b, c" : "", "data-key": key("value"), oninput: typing("value") }));
    }
    if (node.op === "between") {
      body.push(el("span", {}, "and"), el("input", { type: "text", value: node.value2, "aria-label": "To", "data-key": key("value2"), oninput: typing("value2") }));
    }
  }
  return el("div", { class: "condition", role: "group", "aria-label": "Condition" }, not, kind, body, remove);
}

// ---------------------------------------------------------------- profiles

async function profilesPage(kind, value, segment) {
  const generation = session.generation;
  const schemaInfo = await schema();
  const kindSelect = select([["email", "Email"], ["user_id", "User id"], ["anonymous_id", "Anonymous id"], ["id", "Profile id"]],
    kind, "Identifier type", () => {});
  kindSelect.id = "lookup-kind";
  const valueInput = el("input", { id: "lookup-value", type: "text", value, "aria-label": "Identifier", size: 36 });
  const result = el("div", { id: "profile" });
  page(generation, "Profiles",
    el("form", { class: "card row", role: "search", onsubmit: (event) => {
      event.preventDefault();
      location.hash = "#/profiles/" + encodeURIComponent(kindSelect.value) + "/" + encodeURIComponent(valueInput.value.trim());
    } }, el("label", { for: "lookup-value" }, "Find a profile by"), kindSelect, valueInput, el("button", { type: "submit", class: "primary" }, "Find")),
    result);
  if (!value) {
    valueInput.focus();
    return;
  }
  let found;
  try {
    found = await api("GET", "profiles?kind=" + encodeURIComponent(kind) + "&value=" + encodeURIComponent(value));
  } catch (err) {
    fill(result, failure(err));
    return;
  }
  const profile = found.profile;
  const segments = Object.entries(profile.segments || {});
  const explainSelect = select((schemaInfo.segments || []).map((name) => [name, name]), segment || (segments[0] || [])[0], "Segment", () => {});
  explainSelect.id = "explain-segment";
  const explanation = el("div", { id: "explanation", class: "explain", "aria-live": "polite" });
  const explain = async () => {
    try {
      const answer = await api("GET", "segments/" + encodeURIComponent(explainSelect.value) + "/explain?profile=" + encodeURIComponent(found.profile_id));
      fill(explanation,
        el("p", {}, answer.matches ? el("span", { class: "badge in" }, "in " + explainSelect.value) : el("span", { class: "badge out" }, "not in " + explainSelect.value)),
        renderExplanation(answer.explanation));
    } catch (err) {
      fill(explanation, failure(err));
    }
  };
  const timeline = el("div", { id: "timeline" });
  fill(result,
    el("div", { class: "columns" },
      el("div", { class: "card" },
        el("h2", {}, "Profile ", el("code", { id: "profile-id" }, found.profile_id)),
        keyValues([
          ["First seen", profile.first_seen], ["Last seen", profile.last_seen],
          ["Visits", profile.visit_count], ["Sessions", profile.session_count],
          ["City", [profile.city, profile.country].filter(Boolean).join(", ")], ["Timezone", profile.timezone],
        ]),
        el("h2", {}, "Identifiers"),
        el("ul", {}, (profile.identifiers || []).map((identifier) => el("li", {}, identifier.type + ": " + identifier.value))),
        el("h2", {}, "Segments"),
        el("p", { id: "profile-segments" }, segments.length
          ? segments.map(([name, since]) => [el("span", { class: "badge in", title: "since " + since }, name), " "])
          : "none")),
      el("div", { class: "card" },
        el("h2", {}, "Why in or not in a segment"),
        el("div", { class: "row" }, el("label", { for: "explain-segment" }, "Segment"), explainSelect,
          el("button", { type: "button", id: "explain", onclick: explain }, "Explain")),
        explanation)),
    el("div", { class: "columns" },
      el("div", { class: "card" }, el("h2", {}, "Traits"), keyValues(Object.entries(profile.traits || {}))),
      el("div", { class: "card" }, el("h2", {}, "Places"), placesMap(profile))),
    el("div", { class: "columns" },
      el("div", { class: "card" }, el("h2", {}, "Active hours"), hoursChart(((profile.facts || {}).activity) || {})),
      el("div", { class: "card" }, el("h2", {}, "Topic affinities"), topicsChart((((profile.facts || {}).content) || {}).topics || {}))),
    el("div", { class: "card" }, el("h2", {}, "Devices"),
      table(["Device", "First seen", "Last seen"], (profile.devices || []).map((device) =>
        el("tr", {}, el("td", {}, device.user_agent || device.key), el("td", {}, device.first_seen), el("td", {}, device.last_seen))))),
    el("div", { class: "card" }, el("h2", {}, "Facts"), el("pre", {}, JSON.stringify(profile.facts || {}, null, 2))),
    el("div", { class: "card" }, el("h2", {}, "Sessions"),
      table(["Session", "Start", "End", { label: "Events", num: true }], (profile.sessions || []).map((item) =>
        el("tr", {}, el("td", {}, el("code", {}, item.id)), el("td", {}, item.start), el("td", {}, item.end), el("td", { class: "num" }, item.events))))),
    el("div", { class: "card" }, el("h2", {}, "Timeline"), timeline));
  loadTimeline(timeline, found.profile_id, "");
  if (segment) explain();
}

function keyValues(pairs) {
  return el("table", {}, el("tbody", {}, pairs.map(([key, value]) =>
    el("tr", {}, el("th", { scope: "row" }, key), el("td", {}, typeof value === "object" && value !== null ? JSON.stringify(value) : (value ?? "—"))))));
}

function renderExplanation(node) {
  if (!node) return null;
  return el("ul", {}, el("li", { class: node.holds ? "holds" : null },
    el("code", {}, node.condition),
    node.value !== undefined && node.value !== null ? [" — value: ", el("code", {}, JSON.stringify(node.value))] : null,
    (node.parts || []).length ? node.parts.map(renderExplanation) : null));
}

async function loadTimeline(container, id, token) {
  try {
    const page = await api("GET", "profiles/" + encodeURIComponent(id) + "/timeline?page_token=" + encodeURIComponent(token));
    const rows = page.entries.map((entry) => {
      const event = entry.event || {};
      const what = event.event || event.name || (event.properties && event.properties.url) || "";
      return el("tr", {}, el("td", {}, entry.at), el("td", {}, event.type || ""), el("td", {}, what),
        el("td", {}, el("details", {}, el("summary", {}, "event"), el("pre", {}, JSON.stringify(event, null, 2)))));
    });
    const more = page.next_page_token
      ? el("button", { type: "button", onclick: () => loadTimeline(container, id, page.next_page_token) }, "Older events")
      : null;
    fill(container, table(["Time", "Type", "What", ""], rows), more);
  } catch (err) {
    fill(container, failure(err));
  }
}

// A world map as a plain grid (longitude × latitude), with where the person was seen.
function placesMap(profile) {
  const geo = ((profile.facts || {}).geo) || {};
  const width = 360, height = 180;
  const dots = [];
  if (typeof geo.latitude === "number" && typeof geo.longitude === "number") {
    const x = geo.longitude + 180, y = 90 - geo.latitude;
    dots.push(svg("circle", { cx: x, cy: y, r: 4, fill: "#b3261e" }),
      svg("text", { x: x + 6, y: y + 4 }, geo.city || geo.country || ""));
  }
  const lines = [];
  for (let x = 0; x <= width; x += 30) lines.push(svg("line", { x1: x, y1: 0, x2: x, y2: height, stroke: "#d5d9e2" }));
  for (let y = 0; y <= height; y += 30) lines.push(svg("line", { x1: 0, y1: y, x2: width, y2: y, stroke: "#d5d9e2" }));
  const cities = (profile.cities || []).map((place) => el("li", {}, place.city + (place.country ? ", " + place.country : "") + " (last " + place.last_seen + ")"));
  return el("div", {},
    svg("svg", { viewBox: "0 0 " + width + " " + height, width: "100%", role: "img", "aria-label": "Map of where the profile was last seen" },
      svg("rect", { x: 0, y: 0, width, height, fill: "#eef3fb" }), lines, dots),
    el("ul", { "aria-label": "Cities" }, cities.length ? cities : el("li", {}, "no city known")));
}

function hoursChart(activity) {
  const active = activity.active_hours || [];
  if (!active.length) return el("p", { class: "hint" }, "Not enough activity yet.");
  const bars = [];
  for (let hour = 0; hour < 24; hour++) {
    const rank = active.indexOf(hour);
    const height = rank < 0 ? 4 : 60 - rank * 15;
    bars.push(svg("rect", { x: hour * 15 + 2, y: 70 - height, width: 11, height, fill: rank < 0 ? "#c9d3e6" : "#1f5fbf" },
      svg("title", {}, hour + ":00" + (rank < 0 ? "" : " — active hour #" + (rank + 1)))));
    if (hour % 3 === 0) bars.push(svg("text", { x: hour * 15 + 2, y: 86 }, hour));
  }
  return el("div", {},
    svg("svg", { viewBox: "0 0 362 90", width: "100%", role: "img", "aria-label": "Most active hours: " + active.join(", ") }, bars),
    el("p", {}, "Best send hour: ", String(activity.best_send_hour ?? "—"), activity.timezone ? " (" + activity.timezone + ")" : ""));
}

function topicsChart(topics) {
  const entries = Object.entries(topics);
  if (!entries.length) return el("p", { class: "hint" }, "No topics yet.");
  const rows = entries.map(([topic, share], index) => [
    svg("text", { x: 0, y: index * 22 + 15 }, topic),
    svg("rect", { x: 130, y: index * 22 + 4, width: Math.max(2, share * 220), height: 14, fill: "#1b7a3d" }),
    svg("text", { x: 136 + share * 220, y: index * 22 + 15 }, Math.round(share * 100) + "%"),
  ]);
  return svg("svg", { viewBox: "0 0 400 " + entries.length * 22, width: "100%", role: "img", "aria-label": "Topic affinities" }, rows);
}

// ---------------------------------------------------------------- campaigns

async function campaignsPage() {
  const generation = session.generation;
  const campaigns = await api("GET", "campaigns");
  const cards = campaigns.map((campaign) => {
    const toggle = el("button", { type: "button", disabled: !session.canWrite, onclick: async () => {
      try {
        await api("POST", "campaigns/" + encodeURIComponent(campaign.name) + (campaign.paused ? "/resume" : "/pause"));
        await campaignsPage();
      } catch (err) {
        toggle.after(failure(err));
      }
    } }, campaign.paused ? "Resume" : "Pause");
    const inState = Object.entries(campaign.stats.in_state || {});
    return el("div", { class: "card", "data-campaign": campaign.name },
      el("h2", {}, campaign.name, " ", el("span", { class: "badge " + (campaign.paused ? "out" : "in") }, campaign.paused ? "paused" : "running"), " ", toggle),
      el("p", {}, number(campaign.stats.profiles), " profiles · ", number(campaign.stats.entered), " entries · ",
        number(campaign.stats.actions_sent), " actions sent · ", number(campaign.stats.suppressed), " held back by the frequency cap"),
      table(["State", { label: "Profiles now", num: true }], inState.map(([state, count]) =>
        el("tr", {}, el("td", {}, state), el("td", { class: "num" }, number(count))))),
      campaign.graph ? diagram(campaign.graph, campaign.stats.in_state || {}) : null,
      campaign.graph ? templatePreview(campaign.graph) : null,
      el("details", {}, el("summary", {}, "Definition"), el("pre", {}, campaign.source)));
  });
  page(generation, "Campaigns", cards.length ? cards : el("p", {}, "No campaigns yet."));
}

// The state machine, one column per step from the start, arrows labelled with what
// moves a profile along.
function diagram(graph, inState) {
  const depth = { [graph.start]: 0 };
  const queue = [graph.start];
  while (queue.length) {
    const state = queue.shift();
    for (const transition of graph.transitions) {
      if (transition.from === state && !(transition.to in depth)) {
        depth[transition.to] = depth[state] + 1;
        queue.push(transition.to);
      }
    }
  }
  for (const state of graph.states) if (!(state in depth)) depth[state] = 0;
  const columns = {};
  const position = {};
  for (const state of graph.states) {
    const column = depth[state];
    columns[column] = (columns[column] || 0) + 1;
    position[state] = { x: 20 + column * 300, y: 40 + (columns[column] - 1) * 100 };
  }
  const boxWidth = 150, boxHeight = 44;
  const width = 40 + (Math.max(...Object.values(depth)) + 1) * 300;
  const height = 50 + Math.max(...Object.values(columns)) * 100;
  const parts = [svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#5b6475" })))];
  graph.transitions.forEach((transition, index) => {
    const from = position[transition.from], to = position[transition.to];
    const x1 = from.x + boxWidth, y1 = from.y + boxHeight / 2;
    let x2 = to.x, y2 = to.y + boxHeight / 2;
    if (to.x <= from.x) { x2 = to.x + boxWidth / 2; y2 = to.y + (to.y > from.y ? 0 : boxHeight); }
    const bend = (index % 3) * 10;
    const midX = (x1 + x2) / 2, midY = (y1 + y2) / 2 - 8 - bend;
    parts.push(svg("path", { d: "M " + x1 + " " + y1 + " Q " + midX + " " + (midY - 10) + " " + x2 + " " + y2, fill: "none", stroke: "#5b6475", "marker-end": "url(#arrow)" }),
      svg("text", { x: midX, y: midY - 12, "text-anchor": "middle" }, transition.label));
  });
  for (const state of graph.states) {
    const at = position[state];
    const isFinal = graph.final.includes(state);
    const actions = (graph.actions[state] || []).map((action) => action.channel + ": " + action.target).join(", ");
    parts.push(svg("rect", { x: at.x, y: at.y, width: boxWidth, height: boxHeight, rx: 8, fill: state === graph.start ? "#e3ecfa" : "#fff", stroke: isFinal ? "#1b7a3d" : "#1f5fbf", "stroke-width": isFinal ? 3 : 1.5 }),
      svg("text", { x: at.x + 8, y: at.y + 18, "font-weight": "bold" }, state + (inState[state] ? " (" + inState[state] + ")" : "")),
      svg("text", { x: at.x + 8, y: at.y + 35 }, actions.length > 21 ? actions.slice(0, 20) + "…" : actions));
  }
  const description = graph.transitions.map((transition) => transition.from + " → " + transition.to + " " + transition.label).join("; ");
  return el("div", { class: "diagram" }, svg("svg", { viewBox: "0 0 " + width + " " + height, width, height, role: "img", "aria-label": "State machine: " + description }, parts));
}

function templatePreview(graph) {
  const templates = [];
  for (const actions of Object.values(graph.actions)) {
    for (const action of actions) if (action.channel === "email" && !templates.includes(action.target)) templates.push(action.target);
  }
  if (!templates.length) return null;
  const template = select(templates.map((name) => [name, name]), templates[0], "Template", () => {});
  const profile = el("input", { type: "text", "aria-label": "Profile id", placeholder: "profile id", size: 30 });
  const output = el("div", { "aria-live": "polite" });
  const show = async () => {
    try {
      const preview = await api("GET", "templates/" + encodeURIComponent(template.value) + "/preview?profile=" + encodeURIComponent(profile.value.trim()));
      fill(output, keyValues([["To", preview.to], ["Subject", preview.subject]]),
        el("iframe", { class: "email", sandbox: "", title: "Email preview", srcdoc: preview.html || "" }),
        el("details", {}, el("summary", {}, "Text version"), el("pre", {}, preview.text)));
    } catch (err) {
      fill(output, failure(err));
    }
  };
  return el("details", {}, el("summary", {}, "Preview an email for a profile"),
    el("div", { class: "row" }, template, profile, el("button", { type: "button", onclick: show }, "Preview")), output);
}

// ---------------------------------------------------------------- live

let liveTimer = null;

function stopLive() {
  clearInterval(liveTimer);
  liveTimer = null;
}

async function livePage() {
  const generation = session.generation;
  stopLive();
  const body = el("div", { id: "live" });
  page(generation, "Live", body);
  const refresh = async () => {
    if (generation !== session.generation) {
      stopLive();
      return;
    }
    try {
      const live = await api("GET", "live");
      fill(body,
        el("div", { class: "card" }, el("h2", {}, "Events per second"),
          el("p", { id: "events-per-second", style: "font-size: 2rem; margin: 0" },
            live.events_per_second === null ? "measuring…" : live.events_per_second.toFixed(1))),
        el("div", { class: "columns" },
          el("div", { class: "card" }, el("h2", {}, "Consumer lag"),
            table(["Stream", "Consumer", { label: "Pending", num: true }, { label: "Unacked", num: true }], live.lag.map((lag) =>
              el("tr", {}, el("td", {}, lag.stream), el("td", {}, lag.consumer), el("td", { class: "num" }, number(lag.pending)), el("td", { class: "num" }, number(lag.unacknowledged)))))),
          el("div", { class: "card" }, el("h2", {}, "Recent segment changes"),
            live.recent_changes.length
              ? table(["Time (UTC)", "Segment", "", "Profile"], live.recent_changes.slice(0, 25).map((change) =>
                el("tr", {}, el("td", { title: change.at }, change.at.slice(11, 19)), el("td", {}, change.segment),
                  el("td", {}, el("span", { class: "badge " + (change.entered ? "in" : "out") }, change.entered ? "entered" : "exited")),
                  el("td", {}, el("a", { href: "#/profiles/id/" + encodeURIComponent(change.profile_id) }, change.profile_id)))))
              : el("p", { class: "hint" }, "None since the console started."))));
    } catch (err) {
      fill(body, failure(err));
    }
  };
  await refresh();
  if (generation === session.generation) liveTimer = setInterval(refresh, 2000);
}

// ---------------------------------------------------------------- start

document.getElementById("login-form").addEventListener("submit", signIn);
document.getElementById("logout").addEventListener("click", signOut);
window.addEventListener("hashchange", () => { if (session.role && isRoute(location.hash)) route(); });
start().catch((err) => { if (err.status !== 401) page(session.generation, "Something went wrong", failure(err)); });
