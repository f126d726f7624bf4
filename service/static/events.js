// Live account events (service/events/): one WebSocket per page of a
// logged-in user. When this session ends elsewhere the page shows the login
// page with the reason; when the account's sessions change, the sessions
// table refreshes in place. A lost connection is retried with exponential
// backoff and full jitter, so a restart does not bring every tab back at once.
(function () {
  "use strict";

  var SESSION_ENDED = 4001; // the server's close code: do not reconnect
  var GOING_AWAY = 1001;    // a worker shutting down (reload or restart)
  var GOING_AWAY_DELAY = 1500; // ms: the old worker stops accepting within ~1 s
  var BASE_DELAY = 500;     // ms
  var MAX_DELAY = 30000;    // ms
  var failures = 0;
  var finished = false;
  var socket = null;
  var everOpened = false;

  function socketUrl() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    return scheme + window.location.host + "/api/events";
  }

  function showLogin(reason) {
    finished = true;
    window.location.replace("/login?reason=" + encodeURIComponent(reason || "ended"));
  }

  function refreshSessions() {
    var table = document.getElementById("sessions");
    if (!table) {
      return;
    }
    fetch("/sessions", { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) {
          throw new Error("sessions page: " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("sessions");
        if (fresh) {
          table.replaceWith(document.adoptNode(fresh));
        }
      })
      .catch(function () { /* the next event or a reload will do */ });
  }

  function onMessage(message) {
    var event;
    try {
      event = JSON.parse(message.data);
    } catch (ignored) {
      return;
    }
    if (event.type === "session_ended") {
      showLogin(event.reason);
    } else if (event.type === "sessions_changed") {
      refreshSessions();
    }
  }

  function retry(floor) {
    // Full jitter: anywhere between 0 and the current cap (after `floor`).
    var cap = Math.min(MAX_DELAY, BASE_DELAY * Math.pow(2, failures));
    failures += 1;
    window.setTimeout(connect, (floor || 0) + Math.random() * cap);
  }

  function connect() {
    if (finished) {
      return;
    }
    var opened = false;
    socket = new WebSocket(socketUrl());
    socket.addEventListener("open", function () {
      opened = true;
      failures = 0;
      if (everOpened) {
        refreshSessions(); // catch up on what happened while disconnected
      }
      everOpened = true;
    });
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", function (event) {
      if (finished || event.code === SESSION_ENDED) {
        return;
      }
      if (event.code === GOING_AWAY) {
        // A reload: come back once the old worker has stopped accepting,
        // spread over the 2 s after GOING_AWAY_DELAY (no herd).
        failures = Math.max(failures, 2);
        retry(GOING_AWAY_DELAY);
        return;
      }
      if (opened) {
        retry();
        return;
      }
      // Refused at the handshake: perhaps the session ended while we were
      // away. Ask once before trying again.
      fetch("/api/me", { credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 401) {
            showLogin("expired");
          } else {
            retry();
          }
        })
        .catch(retry);
    });
  }

  function stop() {
    finished = true;
    if (socket) {
      socket.close(1000);
    }
  }

  // A form sent from this page (logout among them) navigates it: an event
  // for this session arriving meanwhile must not navigate elsewhere and
  // abort that response (with its deletion cookie).
  document.addEventListener("submit", stop, true);
  window.addEventListener("pagehide", stop);
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) { // back from the back/forward cache
      finished = false;
      failures = 0;
      connect();
    }
  });
  connect();
})();
