// Types of scoreclient.js (the ES module) and of scoreclient.global.js (the classic script,
// which defines the same names on `window.ScoreClient`). Checked by `tsc --strict` against
// clients/js/example.ts in CI.

/** A code of the protocol in plain words (the code itself if it is new to this client).
 * `detail` is the rest of an error reply (`reason`, `banned_until` of `auth_failed`). */
export function explain(code: string, detail?: { reason?: string | null; banned_until?: number | null }): string;

/** Words a game supplies for codes, in its own language or voice: they replace the client's
 * English for those codes (`explain`, `words` on events, results and errors). */
export function setWords(words: Record<string, string>): void;

export class ScoreError extends Error {
  constructor(code: string, message?: string, url?: string, detail?: { reason?: string; banned_until?: number });
  readonly name: "ScoreError";
  /** The protocol's code: `auth_failed`, `rate_limited`, `disconnected`, `not_a_receipt`, ... */
  readonly code: string;
  /** `session_elsewhere`: the game socket of the server that has the game. */
  readonly url: string | undefined;
  /** `auth_failed`: why (`wrong_password`, `expired`, `banned`, `bad_reset_code`). */
  readonly reason: string | null;
  /** `auth_failed` with `banned`: when the ban ends (epoch ms), or null for no end. */
  readonly bannedUntil: number | null;
  /** The code in plain words, for players. */
  readonly words: string;
}

export interface ScoreClientOptions {
  /** The game to play (its id on the server). */
  gameId: string;
  /** scoreserver's HTTP origin (default: where the script came from). */
  httpBase?: string;
  /** The game socket (default: asked from /api/config). */
  socketUrl?: string | null;
  /** Submit when the game ends (default true). */
  autoSubmit?: boolean;
  /** Where the login token is kept (default localStorage; null: nowhere). */
  storage?: Storage | null;
}

export interface Identity {
  user_id: number | null;
  name: string | null;
}

export interface LoginAnswer {
  token: string;
  user_id: number;
  name: string;
  device?: string;
}

export interface Room {
  game_id: string;
  duration_ms: number;
}

export type PointOutcome =
  | { accepted: true; seq: number; score: number }
  | { accepted: false; reason: string; words: string };

export interface PointClaim {
  token: string;
  client_ts: number;
}

export interface Submission {
  start_token: string;
  end_token: string;
  points: PointClaim[];
}

export interface Result {
  type: "result";
  accepted: boolean;
  score?: number;
  saved?: boolean;
  /** Saved, but on no board until a reviewer clears it. */
  held?: boolean;
  held_reason?: "review_top_score" | "flagged" | string;
  /** A kept result's signed receipt (`verifyReceipt`, the /verify page). */
  receipt?: string;
  /** The result's entry in the server's results log. */
  log_index?: number;
  /** Why it was refused (`accepted` false). */
  reason?: string;
  /** The refusal or the hold in plain words. */
  words?: string;
}

export interface MyResult {
  game_id: string;
  session_id: string;
  score: number;
  created_at: number;
  held: boolean;
  held_reason: string | null;
  words?: string;
}

export interface LeaderboardEntry {
  rank: number;
  user_id: number;
  name: string;
  score: number;
}

export interface Leaderboard {
  game_id: string;
  entries: LeaderboardEntry[];
}

export interface EndDetail {
  type: "end_game";
  /** time_up, burst_limit, server_shutdown, crashed, or disconnected (the client gave up
   * reaching the game's server). */
  reason: string;
  /** The server's time of the end; null for an end the client decided (disconnected). */
  server_ts: number | null;
  end_token?: string | null;
  words: string;
  remaining_ms: number;
}

export interface GameStarted {
  type: "game_started";
  session_id: string;
  start_token: string;
  duration_ms: number;
  server_ts: number;
}

/** What each event's `detail` holds. */
export interface ScoreClientEvents {
  identity: Identity;
  room: Room;
  /** Entered as a guest: scores are not saved unless logged in (in words). */
  guest: { words: string };
  start: GameStarted;
  point: { accepted: true; seq: number; score: number };
  reject: { accepted: false; reason: string; words: string };
  end: EndDetail;
  result: Result;
  leaderboard: Leaderboard & { type: "leaderboard" };
  disconnect: { code: number; reason: string };
  reconnect: { attempt: number };
  moved: { url: string };
  logged_out: { reason: string | null; banned_until: number | null; words: string };
  /** A ScoreError (its `code` and `words`). */
  error: ScoreError;
}

export class ScoreClient extends EventTarget {
  constructor(options: ScoreClientOptions);
  readonly gameId: string;
  httpBase: string;
  socketUrl: string | null;
  autoSubmit: boolean;
  storage: Storage | null;
  identity: Identity;
  durationMs: number | null;
  /** The game being played (or the last one), if any. */
  game: Game | null;
  readonly loggedIn: boolean;

  register(name: string, password: string): Promise<LoginAnswer>;
  login(name: string, password: string): Promise<LoginAnswer>;
  logout(): Promise<void>;
  deleteAccount(password: string): Promise<void>;
  resetPassword(name: string, code: string, password: string): Promise<LoginAnswer>;
  myResults(): Promise<MyResult[]>;
  connect(): Promise<void>;
  close(): void;
  whoami(): Promise<Identity>;
  enter(): Promise<Room>;
  start(): Promise<Game>;
  submit(game?: Game): Promise<Result>;
  leaderboard(options?: { limit?: number; offset?: number; around?: number | null; window?: "day" | "week" | "all" }): Promise<Leaderboard>;

  addEventListener<K extends keyof ScoreClientEvents>(
    type: K,
    listener: (event: CustomEvent<ScoreClientEvents[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
}

/** One game session, from game_started to its result. */
export class Game {
  readonly client: ScoreClient;
  readonly sessionId: string;
  readonly startToken: string;
  readonly durationMs: number;
  points: PointClaim[];
  endToken: string | null;
  endReason: string | null;
  running: boolean;
  /** Resolves when the server ends the game. */
  readonly ended: Promise<EndDetail>;
  /** Resolves to the judged result (submitted by itself unless `autoSubmit` is false). */
  readonly result: Promise<Result>;
  /** Milliseconds left by the server's clock, as far as this page can tell. */
  readonly remainingMs: number;
  /** Send a point the player scored. Pass the input event that scored it (or its
   * `timeStamp`) to stamp it when the player acted, not when a busy page ran the handler. */
  point(at?: Event | number): Promise<PointOutcome>;
  /** The body of submit_result / POST /api/results. */
  submission(): Submission;
}

/** A receipt's claims, as `readReceipt` finds them and `verifyReceipt` proves them. */
export interface ReceiptClaims {
  kid: string;
  sessionId: string;
  userId: number;
  savedAt: number;
  gameId: string;
  score: number;
  startedAt: number;
  endedAt: number;
  logIndex: number;
  pointsDigest: string;
  name: string;
}

export interface PublishedKeys {
  keys: { kid: string; alg: "Ed25519"; public_key: string; created_at?: number | null; retired_at?: number | null }[];
}

/** A receipt's claims, unverified (throws ScoreError "not_a_receipt"). */
export function readReceipt(receipt: string): ReceiptClaims & { salt: Uint8Array; body: Uint8Array; signature: Uint8Array };

/** Check a receipt's signature with WebCrypto's Ed25519; `keys` is a GET /api/keys answer
 * (fetched when absent). Rejects with a ScoreError (`not_a_receipt`, `receipt_changed`,
 * `unknown_key`, `key_retired`, `no_ed25519`). */
export function verifyReceipt(receipt: string, keys?: PublishedKeys): Promise<ReceiptClaims & { player: string; valid: true }>;

/** The classic-script build (scoreclient.global.js) defines `window.ScoreClient`: the client
 * class, with the module's other exports on it. */
export interface ScoreClientGlobal {
  new (options: ScoreClientOptions): ScoreClient;
  Game: typeof Game;
  ScoreError: typeof ScoreError;
  explain: typeof explain;
  setWords: typeof setWords;
  readReceipt: typeof readReceipt;
  verifyReceipt: typeof verifyReceipt;
}

declare global {
  interface Window {
    ScoreClient: ScoreClientGlobal;
  }
}
