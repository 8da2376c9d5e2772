// The search page of `evilm serve` (docs/serving.md, "The page"): no framework, no network
// beyond this server. The query lives in the URL (?q=...&offset=...&index=..., or ?similar=KEY),
// so a search can be shared and the back button works.
"use strict";

const PAGE = 12;
const $ = (id) => document.getElementById(id);
const state = { q: "", similar: "", offset: 0, index: "", qa: null };

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function readUrl() {
  const p = new URLSearchParams(location.search);
  state.q = p.get("q") || "";
  state.similar = p.get("similar") || "";
  state.offset = Math.max(0, parseInt(p.get("offset") || "0", 10) || 0);
  state.index = p.get("index") || state.index;
  $("q").value = state.q;
}

function writeUrl() {
  const p = new URLSearchParams();
  if (state.similar) p.set("similar", state.similar); else if (state.q) p.set("q", state.q);
  if (state.offset) p.set("offset", String(state.offset));
  if (state.index) p.set("index", state.index);
  history.pushState(null, "", "?" + p.toString());
}

async function api(path, request) {
  const init = request === undefined ? { credentials: "same-origin" } : { credentials: "same-origin", method: "POST",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(request) };
  const response = await fetch(path, init);
  let body = {};
  try { body = await response.json(); } catch (_) { /* not JSON: say the status */ }
  if (!response.ok) {
    const err = new Error(body.error || `HTTP ${response.status}`);
    err.status = response.status;
    throw err;
  }
  return body;
}

function seconds(t) {
  const m = Math.floor(t / 60), s = (t - 60 * m).toFixed(1).padStart(4, "0");
  return `${m}:${s}`;
}

function clipUrl(key, what) {
  const index = state.index ? `?index=${encodeURIComponent(state.index)}` : "";
  return `/api/clips/${key.split("/").map(encodeURIComponent).join("/")}/${what}${index}`;
}

function play(result) {
  const video = $("video");
  const start = result.start || 0;
  $("player").hidden = false;
  $("playing").textContent = `#${result.rank}  ${result.key}` + (result.end != null ?
    `  ${seconds(start)}-${seconds(result.end)}` : "") + (result.caption ? `  ${result.caption}` : "");
  video.dataset.key = result.key;
  $("answer").textContent = "";
  video.src = clipUrl(result.key, "video");
  video.addEventListener("loadedmetadata", () => { video.currentTime = start; video.play().catch(() => {}); },
                         { once: true });
  $("player").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function card(result) {
  const li = document.createElement("li");
  li.className = "result";
  li.dataset.key = result.key;
  const img = document.createElement("img");
  img.src = clipUrl(result.key, "frames.jpg");
  img.alt = result.caption || result.key;
  img.loading = "lazy";
  img.title = result.has_video ? "play" : "no video file on the server: frames only";
  if (result.has_video) img.addEventListener("click", () => play(result));
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("div");
  meta.className = "meta";
  const times = result.end != null ? `  ${seconds(result.start)}-${seconds(result.end)}` : "";
  meta.textContent = `#${result.rank}  score ${result.score == null ? "-" : result.score.toFixed(3)}  ${result.key}${times}`;
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = result.caption || "";
  const actions = document.createElement("div");
  actions.className = "actions";
  if (result.has_video) {
    const playButton = document.createElement("button");
    playButton.type = "button";
    playButton.className = "play";
    playButton.textContent = "Play";
    playButton.addEventListener("click", () => play(result));
    actions.append(playButton);
  }
  const more = document.createElement("button");
  more.type = "button";
  more.className = "secondary more";
  more.textContent = "More like this";
  more.addEventListener("click", () => { state.similar = result.key; state.q = ""; state.offset = 0; writeUrl(); run(); });
  actions.append(more);
  body.append(meta, caption, actions);
  li.append(img, body);
  return li;
}

async function run() {
  const list = $("results");
  if (!state.q && !state.similar) { list.replaceChildren(); setStatus(""); $("pages").hidden = true; return; }
  const index = state.index ? `&index=${encodeURIComponent(state.index)}` : "";
  const path = state.similar ?
    `/api/similar?key=${encodeURIComponent(state.similar)}&k=${PAGE}&offset=${state.offset}${index}` :
    `/api/search?q=${encodeURIComponent(state.q)}&k=${PAGE}&offset=${state.offset}${index}`;
  setStatus("Searching...");
  try {
    const body = await api(path);
    list.replaceChildren(...body.results.map(card));
    const what = state.similar ? `clips like ${state.similar}` : `"${state.q}"`;
    setStatus(body.results.length ? `Results ${state.offset + 1}-${state.offset + body.results.length} for ${what}` :
              `No results for ${what}.`);
    $("pages").hidden = !body.results.length && !state.offset;
    $("prev").disabled = state.offset === 0;
    $("next").disabled = body.results.length < PAGE;
    $("page").textContent = `page ${Math.floor(state.offset / PAGE) + 1}`;
  } catch (err) {
    list.replaceChildren();
    $("pages").hidden = true;
    if (err.status === 401) { $("login").hidden = false; setStatus("This server needs a token.", true); return; }
    if (err.status === 503 && /loading/.test(err.message)) { setStatus("The index is loading..."); setTimeout(run, 1000); return; }
    setStatus(`Error: ${err.message}`, true);
  }
}

// With `evilm serve --qa CKPT`: a question (qa) or options "a|b|c" (mc) about the clip playing.
async function ask(text) {
  const key = $("video").dataset.key;
  const request = state.qa.takes === "a question" ? { question: text, k: 3 } :
    { options: text.split("|").map((o) => o.trim()).filter(Boolean) };
  if (state.index) request.index = state.index;
  $("answer").textContent = "Thinking...";
  try {
    const body = await api(clipUrl(key, "answer").split("?")[0], request);
    $("answer").textContent = body.answers ?
      body.answers.map((a) => `${a.answer} (${(100 * a.prob).toFixed(1)}%)`).join(", ") :
      `${body.chosen}  (` + body.options.map((o, i) => `${o}: ${body.scores[i].toFixed(2)}`).join(", ") + ")";
  } catch (err) {
    $("answer").textContent = `Error: ${err.message}`;
  }
}

async function loadIndexes() {
  try {
    const body = await api("/api/indexes");
    state.qa = body.qa;
    $("ask").hidden = !body.qa;
    $("question").placeholder = body.qa && body.qa.takes === "a question" ? "Ask about this clip" :
      "Options to choose from: a dog runs|a cat sleeps";
    const select = $("index");
    select.replaceChildren(...body.indexes.map((i) => new Option(`${i.name} (${i.clips} clips)`, i.name)));
    select.hidden = body.indexes.length < 2;
    if (state.index) select.value = state.index;
  } catch (err) {
    if (err.status === 503) setTimeout(loadIndexes, 1000);
  }
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  state.q = $("q").value.trim();
  state.similar = "";
  state.offset = 0;
  state.index = $("index").hidden ? state.index : $("index").value;
  writeUrl();
  run();
});
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  document.cookie = `evilm_token=${encodeURIComponent($("token").value)}; path=/; SameSite=Strict`;
  $("login").hidden = true;
  loadIndexes();
  run();
});
$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("question").value.trim()) ask($("question").value.trim());
});
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); writeUrl(); run(); });
$("next").addEventListener("click", () => { state.offset += PAGE; writeUrl(); run(); });
window.addEventListener("popstate", () => { readUrl(); run(); });

readUrl();
loadIndexes();
run();
