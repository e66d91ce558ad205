// Calls the types must refuse (tests/unit/test_client_types.py expects tsc to fail here).
import { ScoreClient } from "../../scoreserver/static/scoreclient.js";

const scores = new ScoreClient({ game: "demo" });
scores.start("now");
const game = await scores.start();
const n: string = game.durationMs;
