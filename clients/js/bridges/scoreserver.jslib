// Unity WebGL: put this file in Assets/Plugins/WebGL/ and load scoreclient.global.js from the
// page (index.html of the WebGL template):
//   <script src="http://YOUR-SERVER:8080/static/scoreclient.global.js"></script>
// C# declares the functions with [DllImport("__Internal")] and receives answers on the
// GameObject it names, by SendMessage(objectName, method, jsonText):
//   ScoreServerStart(string gameId, string objectName)   -> OnScoreStarted(json)
//   ScoreServerPoint()                                     -> OnScorePoint(json)
//   (the game's end and its result)                        -> OnScoreEnded(json), OnScoreResult(json)
//   ScoreServerLogin(string name, string password)        -> OnScoreLogin(json)
// tests/conformance runs these in Chromium with Unity's helpers stubbed.
mergeInto(LibraryManager.library, {
  ScoreServerStart: function (gameIdPtr, objectPtr) {
    var gameId = UTF8ToString(gameIdPtr), target = UTF8ToString(objectPtr);
    window.scoreServerTarget = target;
    var tell = function (method, value) { SendMessage(target, method, JSON.stringify(value)); };
    if (!window.scoreServer || window.scoreServer.gameId !== gameId) {
      window.scoreServer = new window.ScoreClient({ gameId: gameId });
      window.scoreServer.addEventListener("end", function (e) { tell("OnScoreEnded", e.detail); });
      window.scoreServer.addEventListener("result", function (e) { tell("OnScoreResult", e.detail); });
    }
    window.scoreServer.start().then(
      function (game) { window.scoreServerGame = game; tell("OnScoreStarted", { sessionId: game.sessionId, durationMs: game.durationMs }); },
      function (error) { tell("OnScoreStarted", { error: error.code, words: error.words }); }
    );
  },
  ScoreServerPoint: function () {
    if (!window.scoreServerGame) return;
    window.scoreServerGame.point().then(function (outcome) {
      SendMessage(window.scoreServerTarget || "ScoreServer", "OnScorePoint", JSON.stringify(outcome));
    });
  },
  ScoreServerLogin: function (namePtr, passwordPtr, objectPtr) {
    var target = UTF8ToString(objectPtr);
    window.scoreServerTarget = target;
    window.scoreServer = window.scoreServer || new window.ScoreClient({ gameId: "demo" });
    window.scoreServer.login(UTF8ToString(namePtr), UTF8ToString(passwordPtr)).then(
      function (who) { SendMessage(target, "OnScoreLogin", JSON.stringify({ name: who.name })); },
      function (error) { SendMessage(target, "OnScoreLogin", JSON.stringify({ error: error.code, words: error.words })); }
    );
  },
});
