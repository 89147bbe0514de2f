// pushbox console: polls /console/api/state and /console/api/events every second, sends test
// events, and keeps its own pusher-js connection to show "connected" and its socket id.
// Every value from the server is rendered with textContent / createElement, never as HTML.
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var csrf = '';
  var after = 0;
  var timer = null;
  var pusher = null;
  var MAX_EVENTS = 300;

  function text(id, value) { $(id).textContent = String(value); }

  function el(tag, cls, value) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (value !== undefined) e.textContent = String(value);
    return e;
  }

  function api(method, path, body) {
    var opts = { method: method, credentials: 'same-origin', headers: {} };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    if (method !== 'GET' && csrf) opts.headers['X-Pushbox-Csrf'] = csrf;
    return fetch(path, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) { return { status: r.status, body: j }; });
    });
  }

  function showLogin(msg) {
    $('dash').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    text('login-error', msg || '');
    if (timer) { clearInterval(timer); timer = null; }
    if (pusher) { pusher.disconnect(); pusher = null; }
  }

  function duration(s) {
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    return (d ? d + 'd ' : '') + (h ? h + 'h ' : '') + m + 'm ' + (s % 60) + 's';
  }

  function renderState(st) {
    csrf = st.csrf;
    text('version', 'v' + st.version);
    text('uptime', duration(st.uptime_secs));
    text('scope', 'signed in: ' + st.scope);
    text('conn-total', st.connections.total);
    text('conn-ws', st.connections.websocket);
    text('conn-http', st.connections.http);
    var w = st.webhooks;
    text('webhooks', w ? ('queue: ' + w.queue_depth + ' · dead letters: ' + w.dead_letters +
      ' · delivered: ' + w.delivered + ' · failed attempts: ' + w.failed_attempts) : 'webhooks: not configured');
    var c = st.cluster;
    text('cluster', !c ? 'one box (no [cluster])' : ((c.redis_up ? 'Redis up' : 'Redis LOST') +
      ' · nodes: ' + c.nodes + ' · behind the bus: ' + c.lag_seconds.toFixed(1) + ' s'));
    var t = st.tls;
    text('tls', !t.configured ? 'no TLS' : t.error ? ('certificate: ' + t.error) :
      ((t.expired ? 'EXPIRED ' : 'expires ') + new Date(t.not_after * 1000).toISOString().slice(0, 10) +
        ' (' + t.days_left + ' days)'));

    var body = $('channels').tBodies[0];
    var rows = [];
    st.apps.forEach(function (a) {
      a.channels.forEach(function (c) {
        var tr = document.createElement('tr');
        tr.dataset.channel = c.name;
        tr.appendChild(el('td', '', a.id));
        tr.appendChild(el('td', 'name', c.name));
        tr.appendChild(el('td', 'subs', c.subscribers));
        tr.appendChild(el('td', 'members', c.members ? c.members.join(', ') : ''));
        rows.push(tr);
      });
    });
    body.replaceChildren.apply(body, rows);
    $('no-channels').hidden = rows.length > 0;

    var sel = $('send-app');
    var ids = st.apps.map(function (a) { return a.id; }).join('\n');
    if (sel.dataset.ids !== ids) {
      sel.dataset.ids = ids;
      sel.replaceChildren.apply(sel, st.apps.map(function (a) { return el('option', '', a.id); }));
    }
    if (!pusher && st.apps.length && window.Pusher) connectPusher(st, st.apps[0]);
  }

  // The page's own connection, like the seed's window.getWebSocketState().
  function connectPusher(st, app) {
    var https = location.protocol === 'https:';
    var port = Number(location.port) || (https ? 443 : 80);
    pusher = new window.Pusher(app.key, {
      cluster: 'mt1', forceTLS: https, wsHost: location.hostname, wsPort: port, wssPort: port,
      httpHost: location.hostname, httpPort: port, httpsPort: port, httpPath: st.http_path,
      wsPath: st.ws_path, disableStats: true
    });
    var show = function () {
      var on = pusher && pusher.connection.state === 'connected';
      var pill = $('ws-state');
      pill.className = on ? 'pill on' : 'pill';
      pill.textContent = 'connected: ' + on + (on ? ' · socket ' + pusher.connection.socket_id : '');
    };
    pusher.connection.bind('state_change', show);
    show();
  }

  window.getWebSocketState = function () {
    return {
      connected: !!pusher && pusher.connection.state === 'connected',
      socketId: pusher ? pusher.connection.socket_id : null
    };
  };

  function matches(ev) {
    var fc = $('filter-channel').value.trim(), fe = $('filter-event').value.trim();
    if (fc && !ev.channels.some(function (c) { return c.indexOf(fc) !== -1; })) return false;
    if (fe && ev.name.indexOf(fe) === -1) return false;
    return true;
  }

  function addEvent(ev) {
    var li = el('li');
    li.dataset.channel = ev.channels.join(',');
    li.dataset.event = ev.name;
    li.hidden = !matches(ev);
    var when = new Date(ev.time_ms).toISOString().slice(11, 23);
    li.appendChild(el('span', 'meta', when + ' app ' + ev.app + ' · ' + ev.channels.join(', ') +
      ' · reached ' + ev.delivered.join('+') + (ev.socket_id ? ' · except ' + ev.socket_id : '') + '\n'));
    li.appendChild(el('b', 'ev-name', ev.name));
    li.appendChild(el('span', '', '  '));
    li.appendChild(el('span', 'ev-data', ev.data + (ev.truncated ? ' …(cut)' : '')));
    var list = $('events');
    list.insertBefore(li, list.firstChild);
    while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
  }

  function refilter() {
    Array.prototype.forEach.call($('events').children, function (li) {
      li.hidden = !matches({ channels: li.dataset.channel.split(','), name: li.dataset.event });
    });
  }

  function poll() {
    api('GET', '/console/api/state').then(function (r) {
      if (r.status === 401) return showLogin(r.body.error);
      if (r.status === 200) renderState(r.body);
    }).catch(function () {});
    api('GET', '/console/api/events?after=' + after).then(function (r) {
      if (r.status !== 200) return;
      r.body.events.forEach(addEvent);
      after = r.body.next;
      text('events-lost', r.body.lost ? r.body.lost + ' events not shown (too many at once)' : '');
    }).catch(function () {});
  }

  function start() {
    $('login').hidden = true;
    $('dash').hidden = false;
    $('logout').hidden = false;
    poll();
    if (!timer) timer = setInterval(poll, 1000);
  }

  document.querySelectorAll('input[name=mode]').forEach(function (r) {
    r.addEventListener('change', function () {
      var app = document.querySelector('input[name=mode]:checked').value === 'app';
      $('login-password').hidden = app;
      $('login-app').hidden = !app;
    });
  });

  $('login-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var app = document.querySelector('input[name=mode]:checked').value === 'app';
    var body = app ? { key: $('app-key').value, secret: $('app-secret').value } : { password: $('password').value };
    api('POST', '/console/login', body).then(function (r) {
      if (r.status !== 200) return text('login-error', r.body.error || ('sign-in failed (' + r.status + ')'));
      csrf = r.body.csrf;
      $('password').value = '';
      $('app-secret').value = '';
      start();
    });
  });

  $('logout').addEventListener('click', function () {
    api('POST', '/console/logout', {}).then(function () { showLogin(''); });
  });

  $('send-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var body = { app: $('send-app').value || undefined, channel: $('send-channel').value.trim(),
      event: $('send-event').value.trim(), data: $('send-data').value };
    api('POST', '/console/api/publish', body).then(function (r) {
      text('send-result', r.status === 200 ? 'sent' : ('error ' + r.status + ': ' + (r.body.error || '')));
      $('send-result').className = r.status === 200 ? '' : 'error';
    });
  });

  $('filter-channel').addEventListener('input', refilter);
  $('filter-event').addEventListener('input', refilter);
  $('clear-events').addEventListener('click', function () { $('events').replaceChildren(); });

  // Signed in already (cookie)? Otherwise the login form.
  api('GET', '/console/api/state').then(function (r) {
    if (r.status === 200) start(); else showLogin('');
  }).catch(function () { showLogin('cannot reach the server'); });
})();
