// Godot 4 web export: the JavaScript side of scoreserver_godot.gd. It drives
// window.ScoreClient (scoreclient.global.js) and queues what happens; the GDScript takes the
// queue once a frame as JSON (polling keeps to JavaScriptBridge.eval, with no callbacks).
window.godotScore = (function () {
  var client = null, game = null, queue = [];
  var push = function (kind, detail) { queue.push({ kind: kind, detail: detail }); };
  var watch = function (c) {
    ["guest", "point", "reject", "end", "result", "disconnect", "reconnect"].forEach(function (kind) {
      c.addEventListener(kind, function (e) { push(kind, e.detail); });
    });
  };
  return {
    login: function (gameId, name, password) {
      client = client || new window.ScoreClient({ gameId: gameId });
      watch(client);
      client.login(name, password).then(
        function (who) { push("login", { name: who.name }); },
        function (error) { push("error", { code: error.code, words: error.words }); });
    },
    start: function (gameId) {
      if (!client) { client = new window.ScoreClient({ gameId: gameId }); watch(client); }
      client.start().then(
        function (g) { game = g; push("started", { sessionId: g.sessionId, durationMs: g.durationMs }); },
        function (error) { push("error", { code: error.code, words: error.words }); });
    },
    point: function () { if (game) game.point(); },
    take: function () { var out = JSON.stringify(queue); queue = []; return out; },
  };
})();
