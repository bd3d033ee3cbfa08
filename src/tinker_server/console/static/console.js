// The Tinker console: a hash router that fetches server-rendered HTML fragments and JSON
// with the API key from sessionStorage in the X-API-Key header. The key is never put in a
// URL, a cookie or the page; requests are same-origin and send no credentials.
"use strict";

(function () {
  const KEY = "tinker.console.apiKey";
  const view = document.getElementById("view");
  const signin = document.getElementById("signin");
  const flash = document.getElementById("flash");
  let refreshTimer = null;
  let renderSeq = 0;

  const apiKey = () => sessionStorage.getItem(KEY);

  class HttpError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function request(method, path, body) {
    const headers = { "X-API-Key": apiKey() || "" };
    const init = { method, headers, credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.ok) return response;
    let detail = response.statusText || "request failed";
    try {
      const data = await response.json();
      if (data && typeof data.detail === "string") detail = data.detail;
    } catch (_) { /* not JSON */ }
    if (response.status === 401) signOut("The server refused this key: " + detail);
    throw new HttpError(response.status, detail);
  }

  const json = async (method, path, body) => (await request(method, path, body)).json();

  // -- messages ---------------------------------------------------------------------------

  function say(text, kind) {
    flash.textContent = text;
    flash.className = kind || "info";
    flash.hidden = false;
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { flash.hidden = true; }, 6000);
  }

  function showError(error) {
    const box = document.createElement("div");
    box.className = "card error-card";
    const title = document.createElement("h1");
    title.textContent = error.status === 404 ? "Not found" : "Something went wrong";
    const text = document.createElement("p");
    text.textContent = error.message;
    box.append(title, text);
    view.replaceChildren(box);
  }

  // -- signing in -------------------------------------------------------------------------

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    showSignIn(message);
  }

  function showSignIn(message) {
    clearTimeout(refreshTimer);
    view.replaceChildren();
    document.getElementById("nav").hidden = true;
    document.getElementById("who").hidden = true;
    signin.hidden = false;
    const error = document.getElementById("signin-error");
    error.textContent = message || "";
    error.hidden = !message;
    document.title = "Sign in · Tinker console";
    document.getElementById("api-key").focus();
  }

  async function signIn(key) {
    sessionStorage.setItem(KEY, key);
    try {
      await whoAmI();
    } catch (error) {
      if (error.status !== 401) showSignIn(error.message);
      return;
    }
    signin.hidden = true;
    render();
  }

  async function whoAmI() {
    const me = await json("GET", "/api/v1/auth/apikey/me");
    document.getElementById("who-name").textContent = me.name;
    document.getElementById("who").hidden = false;
    document.getElementById("nav").hidden = false;
  }

  // -- routing ----------------------------------------------------------------------------

  function route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [path, query] = hash.split("?", 2);
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(query || "");
    const section = parts[0] || "runs";
    const frag = (p) => "/console/fragments/" + p + (params.toString() ? "?" + params.toString() : "");
    if (section === "runs" && parts.length > 1) {
      return { section, url: frag("runs/" + encodeURIComponent(parts.slice(1).join("/"))) };
    }
    if (["runs", "sessions", "queue", "playground"].includes(section)) return { section, url: frag(section) };
    return { section: "runs", url: "/console/fragments/runs" };
  }

  async function render() {
    clearTimeout(refreshTimer);
    if (!apiKey()) {
      showSignIn();
      return;
    }
    signin.hidden = true;
    if (document.getElementById("nav").hidden) whoAmI().catch(() => {}); // a key from before a reload
    const seq = ++renderSeq;
    const { section, url } = route();
    for (const link of document.querySelectorAll("[data-nav]")) {
      link.classList.toggle("active", link.dataset.nav === section);
    }
    view.setAttribute("aria-busy", "true");
    try {
      const html = await (await request("GET", url)).text();
      if (seq !== renderSeq) return; // a newer navigation won
      view.innerHTML = html; // rendered by the server with every value escaped
      const root = view.firstElementChild;
      document.title = (root && root.dataset.title ? root.dataset.title + " · " : "") + "Tinker console";
      const every = root && Number(root.dataset.refresh);
      if (every) refreshTimer = setTimeout(() => { if (seq === renderSeq) render(); }, every);
    } catch (error) {
      if (seq === renderSeq && error.status !== 401) showError(error);
    } finally {
      view.removeAttribute("aria-busy");
    }
  }

  // -- checkpoint actions -----------------------------------------------------------------

  const runPath = (run) => encodeURIComponent(run);
  const checkpointPath = (id) => id.split("/").map(encodeURIComponent).join("/");
  const checkpointUrl = (run, id) => "/api/v1/training_runs/" + runPath(run) + "/checkpoints/" + checkpointPath(id);

  function confirmBox(id) {
    return [...document.querySelectorAll("[data-confirm-for]")].find((el) => el.dataset.confirmFor === id);
  }

  const actions = {
    "sign-out": () => signOut(),
    async download(el) {
      const link = await json("GET", "/api/v1/console/runs/" + runPath(el.dataset.run) + "/checkpoints/" +
        checkpointPath(el.dataset.checkpoint) + "/download");
      const a = document.createElement("a");
      a.href = link.url; // a signed, expiring URL: it carries no API key
      a.download = "";
      a.rel = "noopener";
      document.body.append(a);
      a.click();
      a.remove();
      say("Downloading " + el.dataset.checkpoint + " (the link expires " + link.expires + ").");
    },
    async publish(el) {
      await request("POST", checkpointUrl(el.dataset.run, el.dataset.checkpoint) + "/publish");
      say("Published " + el.dataset.checkpoint + ".");
      await render();
    },
    async unpublish(el) {
      await request("DELETE", checkpointUrl(el.dataset.run, el.dataset.checkpoint) + "/publish");
      say("Unpublished " + el.dataset.checkpoint + ".");
      await render();
    },
    delete(el) {
      const box = confirmBox(el.dataset.checkpoint);
      if (box) box.hidden = false;
      el.hidden = true;
    },
    "cancel-delete"(el) {
      const box = confirmBox(el.dataset.checkpoint);
      if (box) box.hidden = true;
      const button = [...document.querySelectorAll('[data-action="delete"]')]
        .find((b) => b.dataset.checkpoint === el.dataset.checkpoint);
      if (button) button.hidden = false;
    },
    async "confirm-delete"(el) {
      await request("DELETE", checkpointUrl(el.dataset.run, el.dataset.checkpoint));
      say("Deleted " + el.dataset.checkpoint + ".");
      await render();
    },
  };

  document.addEventListener("click", async (event) => {
    const el = event.target.closest("[data-action]");
    if (!el || !actions[el.dataset.action]) return;
    event.preventDefault();
    el.disabled = true;
    try {
      await actions[el.dataset.action](el);
    } catch (error) {
      if (error.status !== 401) say(error.message, "error");
    } finally {
      el.disabled = false;
    }
  });

  // -- forms ------------------------------------------------------------------------------

  function stopStrings(text) {
    return text.split(",").map((s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t")).filter((s) => s.length > 0);
  }

  async function samplePlayground(form) {
    const model = form.querySelector("#pg-model").value;
    const body = {
      prompt: form.querySelector("#pg-prompt").value,
      chat: form.querySelector("#pg-chat").checked,
      temperature: Number(form.querySelector("#pg-temperature").value),
      max_tokens: Number(form.querySelector("#pg-max-tokens").value),
      stop: stopStrings(form.querySelector("#pg-stop").value),
    };
    if (model.startsWith("path:")) body.model_path = model.slice(5);
    else body.base_model = model.slice(5);
    const button = form.querySelector("#pg-submit");
    const result = document.getElementById("pg-result");
    const meta = document.getElementById("pg-meta");
    const output = document.getElementById("pg-output");
    button.disabled = true;
    button.textContent = "Sampling…";
    try {
      const out = await json("POST", "/api/v1/console/playground/sample", body);
      output.textContent = out.text;
      meta.textContent = out.tokens.length + " tokens · stopped: " + out.stop_reason + " · prompt " +
        out.prompt_tokens + " tokens" + (out.chat_template ? " (chat template)" : "");
      result.hidden = false;
      result.dataset.state = "done";
    } catch (error) {
      if (error.status !== 401) say(error.message, "error");
    } finally {
      button.disabled = false;
      button.textContent = "Sample";
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    event.preventDefault(); // nothing is ever submitted as a navigation
    if (form.id === "signin-form") {
      const input = form.querySelector("#api-key");
      const key = input.value.trim();
      input.value = "";
      if (key) signIn(key);
    } else if (form.id === "playground-form") {
      samplePlayground(form);
    }
  });

  window.addEventListener("hashchange", () => {
    flash.hidden = true;
    render();
  });

  if (apiKey()) {
    whoAmI().then(render, (error) => { if (error.status !== 401) showError(error); });
  } else {
    showSignIn();
  }
})();
