// The search page: talks to the REST API with the user's key; no page reloads, no build step, no dependencies.

const PAGE_SIZE = 24;
const MAX_WINDOW = 1000; // the API's skip + top limit
// The server makes thumbnails in fixed sizes (128, 256, 512, 1024): 256 px, or 512 px on high-density screens.
const THUMB_SIZE = window.devicePixelRatio > 1.5 ? 512 : 256;
const QUERY_IMAGE_SIDE = 1024; // query images are shrunk in the browser first: the model sees 224 px anyway
const KEY_STORAGE = "pixsearch.apiKey";
// shown on a card, when the index has them (width and height place a region's box on the thumbnail)
const WANTED_FIELDS = ["path", "filename", "folder", "taken_at", "tags", "width", "height", "ocr_boxes", "title",
  "description", "generated_title", "generated_description", "generated_by"];

const $ = (id) => document.getElementById(id);

const state = {
  index: new URLSearchParams(location.search).get("index") || document.body.dataset.defaultIndex,
  // null: recent photos; {kind: "text", text} | {kind: "image", blob, name, preview} | {kind: "like", id, name, preview}
  query: null,
  // person: null, or {id, name} of the person whose photos are shown (name null: unnamed, filtered by id)
  filters: { folder: "", from: "", to: "", tags: new Set(), person: null },
  loaded: 0,
  done: false,
  loading: false,
  generation: 0, // bumped by every new search, so answers to older ones are dropped
  thumbnailUrls: [],
  fields: null, // name -> {filterable, facetable, ...} of the index, from /capabilities
  showAll: false, // show hits the model calls clearly irrelevant too (reset by a new query)
  insidePhotos: false, // rank photos by their best region (object patch) and draw its box
  sort: "", // "": best match (recent photos without a query); else an orderby, e.g. "taken_at desc"
  faces: false, // the index has faces and people (from /capabilities)
  role: "query", // the key's role (from /whoami): only an admin key is offered naming
  people: null, // the index's people, as /people lists them (null: not loaded yet)
  peopleUrls: [], // blob: URLs of the People row's face crops
  photo: null, // the photo shown in the photo view: {hit, name, token, urls}
};

const has = (name, ability = "retrievable") => Boolean(state.fields?.[name]?.[ability]);

function setQuery(query) {
  state.query = query;
  state.showAll = false;
}

// -- the API ----------------------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

/**
 * `#key=...` in the link `pixsearch serve` prints: removed from the address bar at once, then kept in this browser.
 * A different key already kept here is never replaced silently: the user chooses.
 */
async function takeKeyFromFragment() {
  const match = location.hash.match(/(?:^#|&)key=([^&]*)/);
  if (!match) return;
  history.replaceState(history.state, "", location.pathname + location.search);
  let key;
  try {
    key = decodeURIComponent(match[1]).trim();
  } catch {
    await askForKey("The link's key is malformed (it was cut or mistyped): enter the key instead.");
    return;
  }
  const stored = apiKey();
  if (!key || key === stored) return;
  if (!stored || (await confirmReplaceKey())) storeKey(key);
}

function storeKey(key) {
  localStorage.setItem(KEY_STORAGE, key);
  $("forget-key").hidden = false;
}

function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
  $("forget-key").hidden = true;
  $("status").textContent = "The key was removed from this browser.";
}

function confirmReplaceKey() {
  const dialog = $("replace-key-dialog");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "replace"), { once: true });
    dialog.showModal();
  });
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey()) headers.set("api-key", apiKey());
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let code = "Error";
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      code = body.error.code;
      message = body.error.message;
    } catch {
      // not one of our JSON errors: keep the HTTP status line
    }
    throw new ApiError(response.status, code, message);
  }
  return response;
}

const indexPath = () => `/indexes/${encodeURIComponent(state.index)}`;

async function postSearch(body) {
  if (state.query?.kind === "image") {
    const form = new FormData();
    form.append("image", state.query.blob, state.query.name);
    form.append("query", JSON.stringify(body));
    return (await api(`${indexPath()}/images/search`, { method: "POST", body: form })).json();
  }
  const init = { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  return (await api(`${indexPath()}/docs/search`, init)).json();
}

// -- filters (OData, as the API takes them) -----------------------------------------------------------------------------
const literal = (value) => `'${value.replaceAll("'", "''")}'`;

function nextDay(isoDate) {
  const day = new Date(`${isoDate}T00:00:00Z`);
  day.setUTCDate(day.getUTCDate() + 1);
  return day.toISOString().slice(0, 10);
}

function filterExpression({ withFolder = true } = {}) {
  const { folder, from, to, tags, person } = state.filters;
  const parts = [];
  if (folder && withFolder) parts.push(`(folder eq ${literal(folder)} or startswith(folder, ${literal(`${folder}/`)}))`);
  if (from) parts.push(`taken_at ge ${from}T00:00:00Z`);
  if (to) parts.push(`taken_at lt ${nextDay(to)}T00:00:00Z`);
  for (const tag of tags) parts.push(`tags/any(t: t eq ${literal(tag)})`);
  if (person) parts.push(`people/any(p: p eq ${literal(personValue(person))})`);
  return parts.length ? parts.join(" and ") : undefined;
}

function searchBody(skip) {
  const select = ["id", ...WANTED_FIELDS.filter((name) => has(name))].join(",");
  const body = { top: PAGE_SIZE, skip, count: true, select, filter: filterExpression() };
  body.relevance = state.showAll ? "all" : "auto";
  if (state.insidePhotos && state.query) body.regions = "images";
  if (state.sort) {
    body.orderby = state.sort;
    // the relevant hits, up to the largest drop in score, then by date: not every photo there is
    if (state.query) body.cutoff = "gap";
  }
  if (skip === 0) {
    body.facets = [];
    if (has("tags", "facetable")) body.facets.push("tags,count:20");
    if (has("taken_at", "facetable")) body.facets.push("taken_at,interval:year,count:50");
  }
  const query = state.query;
  if (query?.kind === "text") body.search = query.text;
  if (query?.kind === "like") body.vectorQueries = [{ kind: "id", id: query.id }];
  return body;
}

/** The index's fields, so the page asks only for what it has (an index built by a CLIP model has no tags). */
async function loadCapabilities() {
  const [answer, who] = await Promise.all([
    api(`${indexPath()}/capabilities`).then((response) => response.json()),
    api("/whoami").then((response) => response.json()).catch(() => ({ role: "query" })),
  ]);
  state.role = who.role;
  state.fields = Object.fromEntries(answer.fields.map((f) => [f.name, f]));
  state.faces = Boolean(answer.faces) && has("people", "filterable");
  $("tags").hidden = !has("tags", "facetable");
  $("inside-box").hidden = !answer.regions;
  $("sort-box").hidden = !has("taken_at", "sortable");
}

// -- searching ------------------------------------------------------------------------------------------------------------
async function runSearch() {
  const generation = ++state.generation;
  if (state.fields === null) {
    try {
      await loadCapabilities();
    } catch (error) {
      if (generation === state.generation && (await handleError(error))) return;
      if (state.fields === null) return;
    }
  }
  state.loaded = 0;
  state.done = false;
  state.loading = false; // a request of an older search may still be running: its answer will be dropped
  const keep = state.query?.preview; // the query's own picture stays on show in the chip
  for (const url of state.thumbnailUrls) if (url !== keep) URL.revokeObjectURL(url);
  state.thumbnailUrls = state.thumbnailUrls.includes(keep) ? [keep] : [];
  $("results").replaceChildren();
  showError(null);
  describeQuery();
  describePerson();
  const people = state.faces && state.people === null ? loadPeople() : null;
  await Promise.all([loadPage(generation), loadFolders(generation), people]);
}

async function loadPage(generation = state.generation) {
  if (state.loading || state.done) return;
  state.loading = true;
  $("results").setAttribute("aria-busy", "true");
  const skip = state.loaded;
  try {
    const answer = await postSearch(searchBody(skip));
    if (generation !== state.generation) return;
    const hits = answer.value;
    $("results").append(...hits.map((hit) => card(hit, state.query !== null)));
    state.loaded += hits.length;
    state.done = hits.length < PAGE_SIZE || state.loaded + PAGE_SIZE > MAX_WINDOW;
    if (skip === 0) {
      showFacets(answer["@search.facets"] || {});
      showHidden(answer["@pixsearch.hidden"] || 0);
      showBuilding(answer["@pixsearch.indexBuilding"]);
    }
    showCount(answer["@odata.count"]);
  } catch (error) {
    if (generation === state.generation && !(await handleError(error))) state.done = true;
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      $("results").setAttribute("aria-busy", "false");
      $("more").hidden = state.done;
      if (!state.done && sentinelInView()) requestAnimationFrame(() => loadPage()); // a tall window: fill it
    }
  }
}

function sentinelInView() {
  const box = $("sentinel").getBoundingClientRect();
  return box.top < window.innerHeight + 200;
}

async function loadFolders(generation) {
  // Folder choices ignore the folder filter itself, so picking one folder does not hide the others.
  try {
    const body = { top: 1, select: "id", facets: ["folder,count:200"], filter: filterExpression({ withFolder: false }) };
    const init = { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
    const answer = await (await api(`${indexPath()}/docs/search`, init)).json();
    if (generation === state.generation) showFolders(answer["@search.facets"].folder || []);
  } catch {
    // the results request reports errors; folder choices simply stay as they were
  }
}

function describeQuery() {
  const query = state.query;
  const heading = $("results-heading");
  const chip = $("query-chip");
  chip.hidden = !(query?.kind === "image" || query?.kind === "like");
  if (!query) heading.textContent = "Recent photos";
  else if (query.kind === "text") heading.textContent = `Results for “${query.text}”`;
  else {
    heading.textContent = query.kind === "like" ? `Photos like ${query.name}` : `Photos like your image`;
    $("query-chip-image").src = query.preview || "";
    $("query-chip-image").alt = query.kind === "like" ? "" : `Your image ${query.name}`;
    $("query-chip-text").textContent = query.name;
  }
  const params = new URLSearchParams(location.search);
  if (query?.kind === "text") params.set("q", query.text);
  else params.delete("q");
  const search = params.toString();
  history.replaceState(history.state, "", location.pathname + (search ? `?${search}` : ""));
}

function showCount(total) {
  const query = state.query;
  let text;
  if (state.loaded === 0) text = "No photos match.";
  else if (!query && typeof total === "number") text = `${state.loaded} of ${total} photo${total === 1 ? "" : "s"}`;
  else text = `${state.loaded} result${state.loaded === 1 ? "" : "s"}${state.done ? "" : " so far"}`;
  $("status").textContent = text;
}

/** On 401: asks for a key and searches again (true). Otherwise shows the error (false). */
async function handleError(error) {
  if (error instanceof ApiError && error.status === 401) {
    const key = await askForKey(error.message === "invalid api-key" ? "That key was not accepted." : null);
    if (key) {
      runSearch();
      return true;
    }
  }
  if (error instanceof ApiError && error.code === "IndexNotFound") {
    showError(`${error.message}: index some photos with “pixsearch index PATH --index ${state.index}”, or pick ` +
      "another index with ?index=NAME in the address.");
  } else {
    showError(error instanceof ApiError ? error.message : `Could not reach the server (${error.message}).`);
  }
  return false;
}

function showHidden(hidden) {
  $("hidden-note").hidden = !hidden;
  $("hidden-text").textContent = hidden
    ? `${hidden} result${hidden === 1 ? "" : "s"} that clearly do${hidden === 1 ? "es" : ""} not match were left out.`
    : "";
}

/** A bulk load is rebuilding the search index: results are exact (and slower) until it is done. */
function showBuilding(building) {
  $("building-note").hidden = !building;
  if (!building) return;
  const total = building.tuples_total || building.blocks_total;
  const done = building.tuples_total ? building.tuples_done : building.blocks_done;
  const percent = total ? ` (${Math.floor((100 * done) / total)} %)` : "";
  $("building-note").textContent = `The search index is being rebuilt${percent}: results are exact meanwhile, and slower.`;
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// -- results ----------------------------------------------------------------------------------------------------------
const thumbnails = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      thumbnails.unobserve(entry.target);
      loadThumbnail(entry.target);
    }
  },
  { rootMargin: "400px" },
);

async function loadThumbnail(img) {
  const generation = state.generation;
  try {
    const params = new URLSearchParams({ index: state.index, size: String(THUMB_SIZE) });
    const blob = await (await api(`/thumbnails/${encodeURIComponent(img.dataset.key)}?${params}`)).blob();
    if (generation !== state.generation) return;
    const url = URL.createObjectURL(blob);
    state.thumbnailUrls.push(url);
    img.src = url;
  } catch {
    img.closest(".card")?.classList.add("missing");
  }
}

function formatDate(iso) {
  return iso ? new Date(iso).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" }) : "";
}

function card(hit, scored) {
  const name = hit.filename || (hit.path || hit.id).split("/").pop();
  const item = document.createElement("li");
  item.className = "card";
  item.dataset.id = hit.id;
  item.dataset.path = hit.path || "";

  const button = document.createElement("button");
  button.type = "button";
  button.className = "thumb";
  button.title = `More like ${name}`;
  const img = document.createElement("img");
  img.alt = name;
  img.dataset.key = hit.id;
  button.append(img);
  const action = document.createElement("span");
  action.className = "visually-hidden";
  action.textContent = ": more like this";
  button.append(action);
  button.addEventListener("click", () => moreLike(hit.id, name, img.src));

  const caption = document.createElement("p");
  caption.className = "caption";
  const nameText = document.createElement("span");
  nameText.className = "name";
  nameText.textContent = name;
  nameText.title = hit.path || name;
  caption.append(nameText);
  if (scored) {
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit["@search.score"].toFixed(3);
    score.title = "Relevance score";
    caption.append(score);
  }
  const date = document.createElement("span");
  date.className = "date";
  date.textContent = formatDate(hit.taken_at);
  caption.append(date);
  const words = describedBy(hit);
  if (words) caption.append(words);

  const region = hit["@search.region"];
  if (region && hit.width && hit.height) button.append(regionBox(region, hit.width, hit.height));
  if (hit.ocr_boxes && hit.width && hit.height && state.query?.kind === "text") {
    for (const line of textMatches(hit.ocr_boxes, state.query.text)) {
      const box = regionBox(line, hit.width, hit.height);
      box.className = "text-box";
      box.title = `Text in the photo: ${line.text}`;
      button.append(box);
    }
  }

  if (state.faces) {
    const view = document.createElement("button");
    view.type = "button";
    view.className = "link view-photo";
    view.textContent = "Faces";
    const what = document.createElement("span");
    what.className = "visually-hidden";
    what.textContent = ` in ${name}`;
    view.append(what);
    view.addEventListener("click", () => openPhoto(hit, name, view));
    caption.append(view);
  }

  item.append(button, caption);
  thumbnails.observe(img);
  return item;
}

/** What the photo is about: the title people wrote, else a vision LLM's, marked "generated" (never mistaken for a
 * caption someone wrote); its description as the tooltip. Null without either. */
function describedBy(hit) {
  const generated = !hit.title && !hit.description && Boolean(hit.generated_title || hit.generated_description);
  const text = generated ? hit.generated_title || hit.generated_description : hit.title || hit.description;
  if (!text) return null;
  const line = document.createElement("span");
  line.className = "described";
  const words = document.createElement("span");
  words.className = "described-text";
  words.textContent = text;
  words.title = (generated ? hit.generated_description : hit.description) || text;
  line.append(words);
  if (generated) {
    const badge = document.createElement("span");
    badge.className = "generated";
    badge.textContent = "generated";
    badge.title = `Caption written by ${hit.generated_by || "a vision model"}, not by a person`;
    line.append(" ", badge);
  }
  return line;
}

/** The lines of text read in a photo (OCR, JSON from the index) that contain a word of the query. */
function textMatches(ocrBoxes, query) {
  const words = query.toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) || [];
  let lines;
  try {
    lines = JSON.parse(ocrBoxes);
  } catch {
    return [];
  }
  return lines.filter((line) => words.some((word) => line.text.toLowerCase().includes(word))).slice(0, 10);
}

/** The matching region drawn over a whole (letterboxed) thumbnail: box in original pixels -> % of the square. */
function regionBox(region, width, height) {
  const [x0, y0, x1, y1] = region.box;
  const scale = Math.max(width, height);
  const left = (scale - width) / 2;
  const top = (scale - height) / 2;
  const box = document.createElement("span");
  box.className = "region-box";
  box.style.left = `${((left + x0) / scale) * 100}%`;
  box.style.top = `${((top + y0) / scale) * 100}%`;
  box.style.width = `${((x1 - x0) / scale) * 100}%`;
  box.style.height = `${((y1 - y0) / scale) * 100}%`;
  box.title = region.label ? `Matching region: ${region.label}` : "Matching region";
  return box;
}

// -- people -------------------------------------------------------------------------------------------------------------
/** What the people field holds for a person: the name, or the id (as text) while unnamed. */
const personValue = (person) => person.name ?? String(person.id);
const personLabel = (person) => person.name ?? `Unnamed person ${person.id}`;
const faceThumbnailPath = (faceId) => `${indexPath()}/faces/${encodeURIComponent(faceId)}/thumbnail`;

/** A face crop as a blob: URL (fetched with the key; the page only fetches paths it builds itself). */
async function faceCrop(img, faceId, urls) {
  try {
    const url = URL.createObjectURL(await (await api(faceThumbnailPath(faceId))).blob());
    urls.push(url);
    img.src = url;
  } catch {
    img.classList.add("missing");
  }
}

async function loadPeople() {
  try {
    const answer = await (await api(`${indexPath()}/people`)).json();
    state.people = answer.value;
  } catch {
    state.people = []; // the row stays hidden; searching works without it
  }
  showPeople();
}

function showPeople() {
  for (const url of state.peopleUrls) URL.revokeObjectURL(url);
  state.peopleUrls = [];
  const people = state.people || [];
  $("people-box").hidden = people.length === 0;
  $("people-list").replaceChildren(
    ...people.map((person) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "person";
      button.dataset.person = String(person.id);
      button.setAttribute("aria-pressed", String(state.filters.person?.id === person.id));
      const img = document.createElement("img");
      img.alt = "";
      if (person.sample_face) faceCrop(img, person.sample_face, state.peopleUrls);
      const label = document.createElement("span");
      label.className = "person-name";
      label.textContent = personLabel(person);
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = `${person.photo_count} photo${person.photo_count === 1 ? "" : "s"}`;
      button.append(img, label, count);
      button.addEventListener("click", () => {
        choosePerson(state.filters.person?.id === person.id ? null : person);
      });
      item.append(button);
      return item;
    }),
  );
}

function choosePerson(person) {
  state.filters.person = person ? { id: person.id, name: person.name ?? null } : null;
  markChosenPerson();
  runSearch();
}

function markChosenPerson() {
  const chosen = String(state.filters.person?.id);
  for (const button of $("people-list").querySelectorAll("button.person")) {
    button.setAttribute("aria-pressed", String(button.dataset.person === chosen));
  }
}

/** The person filter, shown and removable; an admin key may name an unnamed person there. */
function describePerson() {
  const person = state.filters.person;
  $("person-chip").hidden = !person;
  if (!person) return;
  $("person-chip-name").textContent = personLabel(person);
  const nameable = state.role === "admin" && person.name === null;
  $("person-name-form").hidden = !nameable;
  if (nameable) $("person-name-input").value = "";
}

/** Name a person (admin keys; the server refuses others): the row, the filter and an open photo view follow. */
async function namePerson(id, name) {
  const init = { method: "PATCH", headers: { "content-type": "application/json" }, body: JSON.stringify({ name }) };
  const answer = await (await api(`${indexPath()}/people/${encodeURIComponent(id)}`, init)).json();
  $("status").textContent = `Named ${answer.name}.`;
  await loadPeople();
  if (state.photo) await showPhotoFaces(state.photo);
  if (state.filters.person?.id === id) {
    state.filters.person = { id, name: answer.name };
    runSearch();
  }
}

function namingForm(person, idSuffix) {
  const form = document.createElement("form");
  form.className = "name-form";
  const label = document.createElement("label");
  label.htmlFor = `name-${idSuffix}`;
  label.textContent = "Name this person";
  const input = document.createElement("input");
  input.id = `name-${idSuffix}`;
  input.type = "text";
  input.autocomplete = "off";
  input.maxLength = 100;
  input.required = true;
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  form.append(label, input, save);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = input.value.trim();
    if (name) namePerson(person, name).catch((error) => showPhotoError(error));
  });
  return form;
}

// -- the photo view: the photo larger, its faces outlined with names ---------------------------------------------------
async function openPhoto(hit, name, opener) {
  closePhoto();
  const photo = { hit, name, opener, urls: [] };
  state.photo = photo;
  $("photo-title").textContent = name;
  const img = $("photo-image");
  img.removeAttribute("src");
  img.alt = name;
  $("photo-frame").querySelectorAll(".face-box").forEach((box) => box.remove());
  $("photo-faces").replaceChildren();
  $("photo-faces-status").textContent = "Looking for faces…";
  $("photo-dialog").showModal();
  const params = new URLSearchParams({ index: state.index, size: "1024" });
  const image = api(`/thumbnails/${encodeURIComponent(hit.id)}?${params}`)
    .then((response) => response.blob())
    .then((blob) => {
      if (state.photo !== photo) return;
      const url = URL.createObjectURL(blob);
      photo.urls.push(url);
      img.src = url;
    })
    .catch(() => $("photo-frame").classList.add("missing"));
  await Promise.all([image, showPhotoFaces(photo)]);
}

async function showPhotoFaces(photo) {
  let faces;
  try {
    faces = (await (await api(`${indexPath()}/photos/${encodeURIComponent(photo.hit.id)}/faces`)).json()).value;
  } catch (error) {
    if (state.photo === photo) showPhotoError(error);
    return;
  }
  if (state.photo !== photo) return;
  const frame = $("photo-frame");
  frame.querySelectorAll(".face-box").forEach((box) => box.remove());
  const { width, height } = photo.hit;
  if (width && height) frame.append(...faces.map((face) => faceOutline(face, width, height)));
  $("photo-faces-status").textContent = faces.length
    ? `${faces.length} face${faces.length === 1 ? "" : "s"}`
    : "No faces found in this photo.";
  $("photo-faces").replaceChildren(...faces.map((face, i) => faceItem(face, i, photo)));
}

const faceName = (face) => (face.person === null ? "Not recognised" : personLabel({ id: face.person, name: face.name }));

/** A face's box (pixels of the upright original) as % of the shown photo, with the name; a person's is a button. */
function faceOutline(face, width, height) {
  const [x0, y0, x1, y1] = face.box;
  const box = document.createElement(face.person === null ? "span" : "button");
  box.className = "face-box";
  box.dataset.face = face.id;
  box.style.left = `${(x0 / width) * 100}%`;
  box.style.top = `${(y0 / height) * 100}%`;
  box.style.width = `${((x1 - x0) / width) * 100}%`;
  box.style.height = `${((y1 - y0) / height) * 100}%`;
  const label = document.createElement("span");
  label.className = "face-label";
  label.textContent = faceName(face);
  box.append(label);
  if (face.person === null) {
    box.classList.add("unknown");
    return box;
  }
  box.type = "button";
  box.dataset.person = String(face.person);
  const action = document.createElement("span");
  action.className = "visually-hidden";
  action.textContent = ": show their photos";
  box.append(action);
  box.addEventListener("click", () => {
    closePhoto();
    choosePerson({ id: face.person, name: face.name });
    $("results-heading").focus();
  });
  return box;
}

function faceItem(face, i, photo) {
  const item = document.createElement("li");
  item.className = "face";
  item.dataset.face = face.id;
  const img = document.createElement("img");
  img.alt = "";
  faceCrop(img, face.id, photo.urls);
  const label = document.createElement("span");
  label.className = "face-name";
  label.textContent = faceName(face);
  item.append(img, label);
  if (face.person !== null && face.name === null && state.role === "admin") {
    item.append(namingForm(face.person, `face-${i}`));
  }
  return item;
}

function showPhotoError(error) {
  $("photo-faces-status").textContent = error instanceof ApiError ? error.message : "Could not reach the server.";
}

function closePhoto() {
  const photo = state.photo;
  if (!photo) return;
  state.photo = null;
  for (const url of photo.urls) URL.revokeObjectURL(url);
  $("photo-image").removeAttribute("src");
  if ($("photo-dialog").open) $("photo-dialog").close();
  if (photo.opener?.isConnected) photo.opener.focus();
}

// -- facets -------------------------------------------------------------------------------------------------------------
function showFacets(facets) {
  const tags = new Map((facets.tags || []).map((f) => [f.value, f.count]));
  for (const chosen of state.filters.tags) if (!tags.has(chosen)) tags.set(chosen, 0);
  const list = $("tag-list");
  list.replaceChildren(
    ...[...tags].map(([tag, count]) => {
      const item = document.createElement("li");
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = tag;
      box.checked = state.filters.tags.has(tag);
      box.addEventListener("change", () => {
        if (box.checked) state.filters.tags.add(tag);
        else state.filters.tags.delete(tag);
        runSearch();
      });
      const count_ = document.createElement("span");
      count_.className = "count";
      count_.textContent = String(count);
      label.append(box, ` ${tag} `, count_);
      item.append(label);
      return item;
    }),
  );
  $("no-tags").hidden = tags.size > 0;

  const years = (facets.taken_at || []).slice().sort((a, b) => b.value.localeCompare(a.value));
  $("years-box").hidden = years.length === 0;
  $("year-list").replaceChildren(
    ...years.map(({ value, count }) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link";
      button.textContent = `${value} (${count})`;
      button.setAttribute("aria-label", `Only ${value}: ${count} photos`);
      button.addEventListener("click", () => {
        state.filters.from = $("date-from").value = `${value}-01-01`;
        state.filters.to = $("date-to").value = `${value}-12-31`;
        runSearch();
      });
      item.append(button);
      return item;
    }),
  );
}

function showFolders(folders) {
  const select = $("folder");
  const chosen = state.filters.folder;
  const values = folders.map((f) => f.value);
  if (chosen && !values.includes(chosen)) folders = [...folders, { value: chosen, count: 0 }];
  const prefix = commonFolder(folders.map((f) => f.value));
  const options = [new Option("All folders", "")];
  for (const { value, count } of folders) {
    const label = value.slice(prefix.length).replace(/^\//, "") || value.split("/").pop() || value;
    const option = new Option(`${label} (${count})`, value);
    option.title = value;
    options.push(option);
  }
  select.replaceChildren(...options);
  select.value = chosen;
}

function commonFolder(paths) {
  if (paths.length < 2) return paths.length ? paths[0].split("/").slice(0, -1).join("/") : "";
  const split = paths.map((p) => p.split("/"));
  const common = [];
  for (let i = 0; split.every((parts) => i < parts.length - 1 && parts[i] === split[0][i]); i++) common.push(split[0][i]);
  return common.join("/");
}

// -- query kinds ----------------------------------------------------------------------------------------------------------
function moreLike(id, name, preview) {
  setQuery({ kind: "like", id, name, preview });
  $("q").value = "";
  runSearch();
  $("results-heading").focus();
}

async function searchByImage(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    showError(`${file.name} is not an image.`);
    return;
  }
  const blob = await shrink(file);
  const preview = URL.createObjectURL(blob);
  state.thumbnailUrls.push(preview);
  setQuery({ kind: "image", blob, name: file.name || "image", preview });
  $("q").value = "";
  await runSearch();
}

async function shrink(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(1, QUERY_IMAGE_SIDE / Math.max(bitmap.width, bitmap.height));
    if (scale === 1 && file.size < 2_000_000) return file;
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const smaller = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
    return smaller || file;
  } catch {
    return file; // a format this browser cannot decode (TIFF, HEIC...): the server may still read it
  }
}

// -- the API key --------------------------------------------------------------------------------------------------------
function askForKey(reason) {
  const dialog = $("key-dialog");
  if (reason) $("key-reason").textContent = reason;
  $("key-input").value = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const key = dialog.returnValue === "save" ? $("key-input").value.trim() : "";
        if (key) storeKey(key);
        resolve(key);
      },
      { once: true },
    );
    dialog.showModal();
  });
}

// -- wiring -------------------------------------------------------------------------------------------------------------
function wire() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("q").value.trim();
    setQuery(text ? { kind: "text", text } : null);
    runSearch();
  });
  $("pick-image").addEventListener("click", () => $("image-input").click());
  $("image-input").addEventListener("change", (event) => {
    searchByImage(event.target.files[0]);
    event.target.value = "";
  });
  $("clear-query").addEventListener("click", () => {
    setQuery(null);
    runSearch();
    $("q").focus();
  });
  $("home").addEventListener("click", (event) => {
    event.preventDefault();
    setQuery(null);
    $("q").value = "";
    runSearch();
  });

  $("folder").addEventListener("change", (event) => {
    state.filters.folder = event.target.value;
    runSearch();
  });
  for (const [id, key] of [["date-from", "from"], ["date-to", "to"]]) {
    $(id).addEventListener("change", (event) => {
      state.filters[key] = event.target.value;
      runSearch();
    });
  }
  $("forget-key").addEventListener("click", forgetKey);
  $("sort").addEventListener("change", (event) => {
    state.sort = event.target.value;
    runSearch();
  });
  $("inside-photos").addEventListener("change", (event) => {
    state.insidePhotos = event.target.checked;
    if (state.query) runSearch();
  });
  $("show-all").addEventListener("click", () => {
    state.showAll = true;
    runSearch();
  });
  $("clear-filters").addEventListener("click", () => {
    state.filters = { folder: "", from: "", to: "", tags: new Set(), person: null };
    $("filters").reset();
    markChosenPerson();
    runSearch();
  });
  $("clear-person").addEventListener("click", () => {
    choosePerson(null);
    $("q").focus();
  });
  $("person-name-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("person-name-input").value.trim();
    const person = state.filters.person;
    if (name && person) namePerson(person.id, name).catch((error) => handleError(error));
  });
  $("close-photo").addEventListener("click", closePhoto);
  $("photo-dialog").addEventListener("close", closePhoto); // Escape closes the dialog itself

  $("more").addEventListener("click", () => loadPage());
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && state.loaded > 0) loadPage();
  }).observe($("sentinel"));

  // Drop an image anywhere: the overlay shows while a file is dragged over the page.
  const overlay = $("drop-overlay");
  let depth = 0;
  const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth += 1;
    overlay.hidden = false;
  });
  document.addEventListener("dragover", (event) => {
    if (carriesFiles(event)) event.preventDefault();
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) overlay.hidden = true;
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    depth = 0;
    overlay.hidden = true;
    const file = [...event.dataTransfer.files].find((f) => !f.type || f.type.startsWith("image/"));
    if (file) searchByImage(file);
    else showError("Drop an image file to search by it.");
  });
}

async function start() {
  wire();
  $("forget-key").hidden = !apiKey();
  await takeKeyFromFragment();
  const text = new URLSearchParams(location.search).get("q");
  if (text) {
    $("q").value = text;
    setQuery({ kind: "text", text });
  }
  runSearch();
}

start();
