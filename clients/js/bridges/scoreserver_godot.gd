# Godot 4, web export: an autoload that plays through scoreclient.global.js. Add to the web
# export's "Head Include":
#   <script src="http://YOUR-SERVER:8080/static/scoreclient.global.js"></script>
# and put godot_glue.js beside this script (res://). Then ScoreServer.start("demo"),
# ScoreServer.point() on every point, and connect to `event(kind, detail)`: kinds "started",
# "point", "reject", "end", "result" (with "words", "receipt"), "guest", "error".
# The JavaScript it calls (godot_glue.js) runs in Chromium in tests/conformance.
extends Node

signal event(kind: String, detail: Dictionary)

func _ready() -> void:
	if OS.has_feature("web"):
		JavaScriptBridge.eval(FileAccess.get_file_as_string("res://godot_glue.js"), true)

func login(game_id: String, name: String, password: String) -> void:
	JavaScriptBridge.eval("window.godotScore.login(%s, %s, %s)" % [JSON.stringify(game_id), JSON.stringify(name), JSON.stringify(password)])

func start(game_id: String) -> void:
	JavaScriptBridge.eval("window.godotScore.start(%s)" % JSON.stringify(game_id))

func point() -> void:
	JavaScriptBridge.eval("window.godotScore.point()")

func _process(_delta: float) -> void:
	if not OS.has_feature("web"):
		return
	var taken = JSON.parse_string(str(JavaScriptBridge.eval("window.godotScore.take()")))
	for item in taken:
		event.emit(item["kind"], item["detail"])
