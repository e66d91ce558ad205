// Every name scoreclient.js exports, used as a game would: checked by `tsc --strict --noEmit`
// in CI (tests/unit/test_client_types.py). Installed from the package, pass `httpBase`: the
// module's own URL is then the game's, not the server's.
import {
  Game,
  ScoreClient,
  ScoreError,
  explain,
  readReceipt,
  setWords,
  verifyReceipt,
  type LeaderboardEntry,
  type Result,
} from "../../scoreserver/static/scoreclient.js";

setWords({ burst: "Too fast!" });

async function play(): Promise<void> {
  const scores = new ScoreClient({ gameId: "demo", httpBase: "http://127.0.0.1:8080" });
  scores.addEventListener("reject", (event) => console.log(event.detail.words));
  scores.addEventListener("end", (event) => console.log(event.detail.reason, event.detail.remaining_ms));
  scores.addEventListener("result", (event) => console.log(event.detail.accepted));
  scores.addEventListener("logged_out", (event) => console.log(event.detail.words));
  scores.addEventListener("error", (event) => console.log(event.detail.code, event.detail.words));
  if (!scores.loggedIn) await scores.login("ada", "correct horse battery");
  const room = await scores.enter();
  console.log(`${room.game_id} lasts ${room.duration_ms} ms`);
  const game: Game = await scores.start();
  const outcome = await game.point();
  document.addEventListener("pointerdown", (event) => void game.point(event)); // stamped at the tap
  if (!outcome.accepted) console.log(explain(outcome.reason));
  console.log(game.remainingMs, game.submission().points.length);
  const result: Result = await game.result;
  if (result.receipt !== undefined) {
    const claims = await verifyReceipt(result.receipt);
    console.log(claims.name, claims.score, claims.logIndex, claims.player, readReceipt(result.receipt).kid);
  }
  const board = await scores.leaderboard({ limit: 5, window: "day" });
  const top: LeaderboardEntry | undefined = board.entries[0];
  console.log(top?.name, (await scores.myResults()).length);
  try {
    await scores.resetPassword("ada", "CODE-1234", "a new long password");
  } catch (error) {
    if (error instanceof ScoreError) console.log(error.code, error.words, error.reason);
  }
  await scores.logout();
  scores.close();
}

play().catch((error: unknown) => console.error(error));

// The classic-script build: window.ScoreClient, with the other exports on it.
const fromGlobal: ScoreClient = new window.ScoreClient({ gameId: "demo" });
console.log(fromGlobal.gameId, window.ScoreClient.explain("time_up"));
