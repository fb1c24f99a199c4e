/*! cairn.js: Cairn's browser tag, served by the collector at /cairn.js. No dependencies.
 *
 *   <script src="https://collector.example.com/cairn.js" data-write-key="wk_..."></script>
 *
 * Keeps the visitor's anonymous id in a first-party cookie (cairn_aid, one year), sends a
 * page event on load (data-auto-page="false" to skip), and offers cairn.page(),
 * cairn.track(), cairn.identify(), cairn.reset(), cairn.flush() and cairn.personalize().
 * Events are batched (every second, or 20 at a time) to /v1/batch, kept in localStorage
 * until the collector accepts them, retried with a doubling pause, and sent with
 * sendBeacon when the page is hidden; each has a message id, so a retry is stored once.
 * A landing page reached by a tracked link in a campaign email (?cairn_t=...) ties the
 * visitor to the person who clicked (POST /v1/link). Calls made before the tag loads can be queued: window.cairn = window.cairn || [];
 * cairn.push(["track", "Viewed Pricing"]).
 */
(function (window, document) {
  "use strict";
  var previous = window.cairn;
  if (previous && previous.loaded) return;

  var VERSION = "0.1.0";
  var ANONYMOUS_COOKIE = "cairn_aid";
  var USER_COOKIE = "cairn_uid";
  var STORED_QUEUE = "cairn_queue";
  var FLUSH_AT = 20;
  var FLUSH_EVERY_MS = 1000;
  var MAX_BATCH = 100;
  // keepalive requests and beacons carry at most 64 KB.
  var MAX_BATCH_BYTES = 60000;
  var MAX_QUEUED = 1000;
  var MAX_PAUSE_MS = 30000;

  var script = document.currentScript;
  var attribute = function (name) {
    return script ? script.getAttribute(name) : null;
  };
  var writeKey = attribute("data-write-key") || "";
  var host = (attribute("data-host") || (script && script.src ? new URL(script.src, location.href).origin : location.origin)).replace(/\/$/, "");

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 15) | 64;
    bytes[8] = (bytes[8] & 63) | 128;
    var hex = Array.prototype.map.call(bytes, function (b) {
      return (b + 256).toString(16).slice(1);
    }).join("");
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join("-");
  }

  function readCookie(name) {
    var found = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return found ? decodeURIComponent(found[1]) : null;
  }

  function writeCookie(name, value, maxAge) {
    document.cookie = name + "=" + encodeURIComponent(value) + "; Max-Age=" + maxAge +
      "; Path=/; SameSite=Lax" + (location.protocol === "https:" ? "; Secure" : "");
  }

  var anonymousId = readCookie(ANONYMOUS_COOKIE) || uuid();
  writeCookie(ANONYMOUS_COOKIE, anonymousId, 31536000);
  var userId = readCookie(USER_COOKIE);

  var queue = [];
  try {
    queue = JSON.parse(localStorage.getItem(STORED_QUEUE) || "[]");
  } catch (ignored) {
    queue = [];
  }
  function store() {
    if (queue.length > MAX_QUEUED) queue.splice(0, queue.length - MAX_QUEUED);
    try {
      localStorage.setItem(STORED_QUEUE, JSON.stringify(queue));
    } catch (ignored) {
      // Private mode or full: the queue lives in memory only.
    }
  }

  function pageProperties() {
    return {
      path: location.pathname,
      referrer: document.referrer,
      search: location.search,
      title: document.title,
      url: location.href
    };
  }

  function context() {
    var timezone;
    try {
      timezone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    } catch (ignored) {
      timezone = undefined;
    }
    return {
      library: { name: "cairn.js", version: VERSION },
      locale: navigator.language,
      page: pageProperties(),
      screen: { width: screen.width, height: screen.height, density: window.devicePixelRatio },
      timezone: timezone,
      userAgent: navigator.userAgent
    };
  }

  var sending = null;
  var pause = 0;
  var timer = null;

  function later(delay) {
    if (timer) return;
    timer = setTimeout(function () {
      timer = null;
      flush();
    }, delay);
  }

  function body(batch) {
    return JSON.stringify({ batch: batch, writeKey: writeKey, sentAt: new Date().toISOString() });
  }

  // The first events of the queue that fit in one request.
  function nextBatch() {
    var batch = [];
    var bytes = 0;
    for (var i = 0; i < queue.length && batch.length < MAX_BATCH; i++) {
      var size = JSON.stringify(queue[i]).length;
      if (batch.length && bytes + size > MAX_BATCH_BYTES) break;
      batch.push(queue[i]);
      bytes += size;
    }
    return batch;
  }

  // Sends what is queued, a batch at a time; resolves once the queue is empty or a
  // batch failed (it is kept, and tried again after a pause). While a batch is on its
  // way, resolves when that flush does.
  function flush() {
    if (sending) return sending;
    if (!queue.length) return Promise.resolve();
    var batch = nextBatch();
    sending = fetch(host + "/v1/batch", {
      method: "POST",
      body: body(batch),
      // text/plain needs no CORS preflight; the collector reads the JSON all the same.
      headers: { "Content-Type": "text/plain" },
      credentials: "omit",
      keepalive: true
    }).then(function (response) {
      var retry = response.status === 408 || response.status === 429 || response.status >= 500;
      if (retry) throw new Error("the collector answered " + response.status);
      if (!response.ok && window.console) {
        console.warn("cairn: the collector refused a batch (" + response.status + ")");
      }
      queue.splice(0, batch.length);
      pause = 0;
    }).catch(function () {
      pause = Math.min(pause ? pause * 2 : 1000, MAX_PAUSE_MS);
    }).then(function () {
      sending = null;
      store();
      if (!queue.length) return undefined;
      if (pause) {
        later(pause);
        return undefined;
      }
      return flush();
    });
    return sending;
  }

  function enqueue(message) {
    message.messageId = uuid();
    message.timestamp = new Date().toISOString();
    message.anonymousId = anonymousId;
    if (userId) message.userId = userId;
    message.context = context();
    queue.push(message);
    store();
    if (queue.length >= FLUSH_AT && !pause) flush();
    else later(pause || FLUSH_EVERY_MS);
  }

  function assign(target, source) {
    for (var key in source) {
      if (Object.prototype.hasOwnProperty.call(source, key)) target[key] = source[key];
    }
    return target;
  }

  // The campaign content goes into the element naming its campaign
  // (data-cairn-campaign="welcome"), or else into a small dismissible box. As text:
  // content never becomes markup.
  function show(answer) {
    answer.content.forEach(function (item) {
      var slots = document.querySelectorAll("[data-cairn-campaign]");
      for (var i = 0; i < slots.length; i++) {
        if (slots[i].getAttribute("data-cairn-campaign") === item.campaign) {
          slots[i].textContent = item.content;
          slots[i].hidden = false;
          return;
        }
      }
      var id = "cairn-" + item.campaign;
      if (document.getElementById(id)) return;
      var box = document.createElement("div");
      box.id = id;
      box.className = "cairn-popup";
      box.setAttribute("role", "dialog");
      box.style.cssText = "position:fixed;right:16px;bottom:16px;max-width:320px;padding:16px 40px 16px 16px;" +
        "background:#fff;color:#111;border-radius:8px;box-shadow:0 4px 24px rgba(0,0,0,.2);" +
        "font:15px/1.4 system-ui,sans-serif;z-index:2147483647";
      var text = document.createElement("div");
      text.textContent = item.content;
      var close = document.createElement("button");
      close.type = "button";
      close.setAttribute("aria-label", "Close");
      close.textContent = "\u00d7";
      close.style.cssText = "position:absolute;top:6px;right:10px;border:0;background:none;font-size:20px;cursor:pointer";
      close.onclick = function () {
        box.parentNode.removeChild(box);
      };
      box.appendChild(text);
      box.appendChild(close);
      document.body.appendChild(box);
    });
  }

  var cairn = {
    loaded: true,
    version: VERSION,
    page: function (name, properties) {
      var message = { type: "page", properties: assign(pageProperties(), properties || {}) };
      if (name) message.name = name;
      enqueue(message);
    },
    track: function (event, properties) {
      enqueue({ type: "track", event: event, properties: properties || {} });
    },
    identify: function (id, traits) {
      if (id && typeof id === "object") {
        traits = id;
        id = null;
      }
      if (id) {
        userId = String(id);
        writeCookie(USER_COOKIE, userId, 31536000);
      }
      enqueue({ type: "identify", traits: traits || {} });
    },
    // Someone else is using the browser now: new anonymous id, no user id.
    reset: function () {
      userId = null;
      writeCookie(USER_COOKIE, "", 0);
      anonymousId = uuid();
      writeCookie(ANONYMOUS_COOKIE, anonymousId, 31536000);
    },
    anonymousId: function () {
      return anonymousId;
    },
    userId: function () {
      return userId;
    },
    flush: flush,
    // Asks what to show this visitor now (their segments and the campaigns' web
    // content), after sending what is queued; shows the content (or hands the answer
    // to `render`) and resolves with the answer.
    personalize: function (render) {
      return flush().then(function () {
        // By the anonymous id: a write key may not look people up by user id.
        var query = "writeKey=" + encodeURIComponent(writeKey) + "&anonymousId=" + encodeURIComponent(anonymousId);
        return fetch(host + "/v1/personalize?" + query, { credentials: "omit" });
      }).then(function (response) {
        if (!response.ok) throw new Error("cairn: personalize answered " + response.status);
        return response.json();
      }).then(function (answer) {
        (render || show)(answer);
        return answer;
      });
    },
    push: function (call) {
      cairn[call[0]].apply(cairn, call.slice(1));
    }
  };

  window.cairn = cairn;
  // Arrived by a link in a campaign email: the collector ties this browser to the
  // person (cairn_t, good for ten minutes), and the token leaves the address bar before
  // the page event reads it.
  var params = new URLSearchParams(location.search);
  var visit = params.get("cairn_t");
  if (visit) {
    params.delete("cairn_t");
    var rest = params.toString();
    if (history.replaceState) history.replaceState(history.state, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    fetch(host + "/v1/link", {
      method: "POST",
      body: JSON.stringify({ t: visit, anonymousId: anonymousId }),
      headers: { "Content-Type": "text/plain" },
      keepalive: true,
      credentials: "omit"
    }).catch(function () {});
  }
  if (attribute("data-auto-page") !== "false") cairn.page();
  if (Array.isArray(previous)) previous.forEach(cairn.push);
  if (queue.length) later(FLUSH_EVERY_MS);

  // Leaving the page: what is queued goes with sendBeacon, which outlives the page.
  document.addEventListener("visibilitychange", function () {
    // A batch on its way is not sent twice: it finishes with keepalive.
    if (document.visibilityState !== "hidden" || sending || !queue.length || !navigator.sendBeacon) return;
    var batch = nextBatch();
    if (navigator.sendBeacon(host + "/v1/batch", new Blob([body(batch)], { type: "text/plain" }))) {
      queue.splice(0, batch.length);
      store();
    }
  });
})(window, document);
