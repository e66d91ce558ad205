// scoreclient.global.js: scoreclient.js as a classic script. Made by
// `python -m scoreserver.ops.jsbuild` from scoreclient.js; do not edit by hand.
//
//   <script src="http://HOST:8080/static/scoreclient.global.js"></script>
//   const scores = new ScoreClient({ gameId: "demo" });   // window.ScoreClient
//
// The module's other exports are on it: ScoreClient.explain, ScoreClient.Game, ...
(function () {
  "use strict";
  const SCRIPT_URL = (typeof document !== "undefined" && document.currentScript && document.currentScript.src) || null;
// scoreclient.js: the browser side of scoreserver. One ES module, no dependencies, no build.
//
//   import { ScoreClient } from "http://HOST:8080/static/scoreclient.js";
//   const scores = new ScoreClient({ gameId: "demo" });
//   await scores.enter();                   // who am I, join the room, learn the duration
//   const game = await scores.start();      // the server's timer starts now
//   game.point();                           // on every point the player scores
//   const result = await game.result;       // after end_game: submitted, judged, maybe saved
//
// The server is the authority on time: a game ends when `end_game` arrives, not when a page
// timer says so. Events (ScoreClient is an EventTarget; event.detail carries the data):
//   identity, room, start, point, reject, end, result, leaderboard, disconnect, reconnect,
//   moved (a resume sent to another server: `session_elsewhere`, followed), logged_out (a kept
//   login no longer holds: expired, or the account banned; detail.words says which), error. Every code a player may see (a rejected point's reason, a game's end, a refused
//   result, an error) has plain words: `explain(code)`, also `detail.words` on reject, end and
//   result events and `error.words` on a ScoreError. A lost socket is always reported ("disconnect"); mid-game the client reconnects and
//   resumes by itself, and submits over HTTP if the socket cannot be had.

const TOKEN_KEY = "scoreserver.login";
// A device token per account name (casefolded, as names are compared), kept across logouts.
const deviceKey = (name) => `scoreserver.device.${String(name).trim().toLowerCase()}`;
const REQUEST_TIMEOUT_MS = 15000;

// Every code a player may meet, in plain words. Pages show `explain(code)`; code keeps the
// code itself (event.detail.reason, error.code) to decide what to do.
// The page's clock for stamps: monotonic (performance.now() never steps when the device's
// wall clock is corrected mid-game, as Date.now() does), on the epoch like Date.now().
const now = () => Math.round(performance.timeOrigin + performance.now());

// The stamp of a point scored at `at`: an input event (its `timeStamp`, when the player acted)
// or such a time, on the page's clock as performance.now() is. A page busy with a long task
// runs the handlers of the taps that queued behind it one after another; stamped when the
// handler runs, they look a millisecond apart, so the event's own time is the truer one.
// Anything else, in the future or over a second old, is not such a time: now instead.
const stampAt = (at) => {
  const current = now();
  const time = typeof at === "number" ? at : at && typeof at.timeStamp === "number" ? at.timeStamp : NaN;
  if (!Number.isFinite(time)) return current;
  const stamp = Math.round(performance.timeOrigin + time);
  return stamp <= current && stamp >= current - 1000 ? stamp : current;
};

const WORDS = {
  // why a point counted for nothing
  no_session: "No game is running: start one first.",
  game_over: "Too late: the game had already ended.",
  burst: "Too fast: points that close together do not count.",
  clock: "Your device's clock disagreed with the server's, so that point did not count.",
  // why a game ended
  time_up: "Time's up!",
  burst_limit: "Game stopped: too many points too fast. It will be reviewed.",
  server_shutdown: "Game stopped: the server is restarting. This game cannot be saved.",
  crashed: "Game stopped: the server running it stopped answering. This game cannot be saved; start a new one.",
  // why a result was refused
  bad_start_token: "This result could not be checked (its game is not one the server started).",
  bad_end_token: "This result could not be checked (the game had not ended properly).",
  bad_point_token: "This result holds a point the server did not give.",
  duplicate_point: "This result counts a point twice.",
  timing_mismatch: "This result's point times do not match when the server counted them.",
  unknown_session: "The server has no record of this game.",
  session_voided: "This game was stopped early and cannot be saved.",
  already_submitted: "This game's result was already sent.",
  expired: "Too late: this game's result had to be sent sooner.",
  account_banned: "This account is banned: its results are not saved.",
  implausible_score: "This score is above what this game allows.",
  // why a saved result is on no board yet (result.held_reason, myResults())
  review_top_score: "Saved, and held for review: it is above every score this game's trusted players have reached. It appears on the board once a reviewer clears it.",
  flagged: "Saved, but held for review: this account has a flag open, so its scores are off the board until a reviewer decides.",
  hidden: "Hidden from the board by a reviewer.",
  banned: "Off the board: this account is banned.",
  // why a request was refused
  bad_json: "The server could not read a message from this page.",
  bad_message: "The server could not understand a message from this page.",
  unknown_type: "The server did not understand a request from this page.",
  auth_failed: "Your login has expired or is no longer valid: please log in again.",
  // auth_failed, by its `reason`
  "auth_failed.wrong_password": "Wrong name or password.",
  "auth_failed.expired": "Your login has expired or is no longer valid: please log in again.",
  "auth_failed.banned": "This account is banned until a reviewer lifts the ban.",
  "auth_failed.banned_until": "This account is banned until {until}.",
  "auth_failed.bad_reset_code": "That reset code is wrong or has expired: ask the organiser for a new one.",
  unknown_game: "There is no such game on this server.",
  "unknown_game.archived": "This game is over: its board is kept, but it cannot be played any more.",
  identity_mismatch: "This page is not logged in as that player.",
  not_in_room: "Join the game before starting it.",
  session_active: "A game is already running for you (perhaps in another tab).",
  rate_limited: "Too many requests: wait a moment and try again.",
  session_elsewhere: "This game is being played on another server; reconnecting there.",
  busy: "The server is busy: try again in a moment.",
  name_taken: "That name (or one that looks just like it) is taken.",
  too_large: "That was too much data for the server.",
  disconnected: "The connection to the server was lost.",
  guest: "Playing as a guest: scores are not saved unless you log in.",
  timeout: "The server did not answer in time.",
  // why a receipt does not verify (verifyReceipt)
  not_a_receipt: "That is not a scoreserver receipt (it may be cut short: copy all of it).",
  receipt_changed: "This receipt was changed after the server signed it: it proves nothing.",
  unknown_key: "This receipt was signed by a key this server never published (another server's receipt?).",
  key_retired: "This receipt is dated after its key was retired: no server signs with a retired key.",
  no_ed25519: "This browser cannot check Ed25519 signatures: use a current Chrome, Firefox or Safari, or `scoreserver verify`.",
};

/** Words a game supplies for codes (its own language or voice), replacing the English above
 * for those codes wherever words are given: `explain`, events, results, errors. */
function setWords(words) {
  for (const [code, text] of Object.entries(words || {})) {
    if (typeof text === "string") WORDS[code] = text;
  }
}

/** A code of the protocol in plain words (the code itself if it is new to this client).
 * `detail` is the rest of an error reply: `auth_failed` says why in `reason` (wrong_password,
 * expired, banned) and until when a ban lasts in `banned_until`. */
function explain(code, detail = {}) {
  const reason = detail && detail.reason;
  if (reason === "banned" && typeof detail.banned_until === "number") {
    const until = new Date(detail.banned_until).toLocaleString();
    return WORDS[`${code}.banned_until`].replace("{until}", until);
  }
  return WORDS[`${code}.${reason}`] || WORDS[code] || String(code).replaceAll("_", " ");
}

class ScoreError extends Error {
  constructor(code, message, url, detail = {}) {
    super(message || code);
    this.name = "ScoreError";
    this.code = code;
    /** `session_elsewhere`: the game socket of the server that has the game. */
    this.url = url;
    /** `auth_failed`: why (wrong_password, expired, banned), and a ban's end (epoch ms). */
    this.reason = detail.reason || null;
    this.bannedUntil = typeof detail.banned_until === "number" ? detail.banned_until : null;
    /** The code in plain words, for players (`message` is the server's own, for developers). */
    this.words = explain(code, detail);
  }
}

// --- receipts --------------------------------------------------------------------------------

function b64urlBytes(text) {
  const s = String(text).trim();
  if (!/^[A-Za-z0-9_-]*$/.test(s)) throw new ScoreError("not_a_receipt");
  const b64 = s.replaceAll("-", "+").replaceAll("_", "/") + "===".slice((s.length + 3) % 4);
  let raw;
  try { raw = atob(b64); } catch { throw new ScoreError("not_a_receipt"); }
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** The claims of a receipt (`result.receipt`), unverified. Throws ScoreError("not_a_receipt"). */
function readReceipt(receipt) {
  const raw = b64urlBytes(receipt);
  const view = new DataView(raw.buffer);
  const bad = () => new ScoreError("not_a_receipt");
  if (raw.length < 49 || raw[0] !== 0x53 || raw[1] !== 0x53 || raw[2] !== 1 || raw[3] !== 0x52) throw bad();
  const gameLen = raw[48];
  const at = 49 + gameLen; // the receipt's own fields follow the game id
  if (raw.length < at + 81 + 64) throw bad();
  const nameLen = raw[at + 80];
  const end = at + 81 + nameLen;
  if (raw.length !== end + 64) throw bad();
  const text = new TextDecoder("utf-8", { fatal: true });
  let gameId, name;
  try {
    gameId = text.decode(raw.subarray(49, at));
    name = text.decode(raw.subarray(at + 81, end));
  } catch { throw bad(); }
  const u64 = (offset) => Number(view.getBigUint64(offset));
  return {
    kid: hex(raw.subarray(4, 12)),
    sessionId: hex(raw.subarray(12, 28)),
    userId: Number(view.getBigInt64(28)),
    savedAt: u64(40),
    gameId,
    score: Number(view.getBigInt64(at)),
    startedAt: u64(at + 8),
    endedAt: u64(at + 16),
    logIndex: u64(at + 24),
    pointsDigest: hex(raw.subarray(at + 32, at + 64)),
    salt: raw.slice(at + 64, at + 80),
    name,
    body: raw.slice(0, end),
    signature: raw.slice(end),
  };
}

/** Check a receipt with the browser's own Ed25519 (WebCrypto), offline once the keys are in
 * hand. `keys` is the server's `GET /api/keys` answer; without it they are fetched from the
 * server this module came from. Resolves to the receipt's claims (with `player`, the name its
 * log entry goes by); rejects with a ScoreError whose `words` say why it does not verify. */
async function verifyReceipt(receipt, keys) {
  const claims = readReceipt(receipt);
  if (!keys) {
    const response = await fetch(`${serverOrigin()}/api/keys`);
    keys = await response.json();
  }
  const key = (keys.keys || []).find((k) => k.kid === claims.kid);
  if (!key) throw new ScoreError("unknown_key");
  let publicKey;
  try {
    publicKey = await crypto.subtle.importKey("raw", b64urlBytes(key.public_key), { name: "Ed25519" }, false, ["verify"]);
  } catch {
    throw new ScoreError("no_ed25519");
  }
  const valid = await crypto.subtle.verify({ name: "Ed25519" }, publicKey, claims.signature, claims.body);
  if (!valid) throw new ScoreError("receipt_changed");
  if (typeof key.retired_at === "number" && claims.savedAt > key.retired_at) throw new ScoreError("key_retired");
  const label = new TextEncoder().encode("scoreserver player v1\n");
  const id = new Uint8Array(8);
  new DataView(id.buffer).setBigUint64(0, BigInt(claims.userId));
  const digest = await crypto.subtle.digest("SHA-256", new Uint8Array([...label, ...claims.salt, ...id]));
  const { body, signature, salt, ...rest } = claims;
  return { ...rest, player: hex(new Uint8Array(digest)), valid: true };
}

function serverOrigin() {
  // This module is served by the scoreserver's HTTP side: its own URL says where that is.
  try {
    return new URL(SCRIPT_URL).origin;
  } catch {
    return globalThis.location ? globalThis.location.origin : "http://127.0.0.1:8080";
  }
}

class ScoreClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.gameId        the game to play
   * @param {string} [options.httpBase]    scoreserver's HTTP origin (default: where this module came from)
   * @param {string} [options.socketUrl]   the game socket (default: asked from /api/config)
   * @param {boolean} [options.autoSubmit] submit when the game ends (default true)
   * @param {Storage|null} [options.storage] where the login token is kept (default localStorage)
   */
  constructor(options = {}) {
    super();
    if (!options.gameId) throw new TypeError("ScoreClient needs a gameId");
    this.gameId = options.gameId;
    this.httpBase = (options.httpBase || serverOrigin()).replace(/\/$/, "");
    this.socketUrl = options.socketUrl || null;
    this.autoSubmit = options.autoSubmit !== false;
    this.storage = options.storage === undefined ? globalThis.localStorage || null : options.storage;
    this.identity = { user_id: null, name: null };
    this.durationMs = null;
    this.game = null;
    this._ws = null;
    this._opening = null;
    this._nextId = 1;
    this._pending = new Map();
    this._closedByUs = false;
    this._roomWs = null; // the connection the room was entered on
    this._token = null; // the login token of this client's login, if any
  }

  get loggedIn() {
    return this.identity.user_id !== null;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // --- accounts, over HTTP -----------------------------------------------------------------

  async _post(path, body, token = null) {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(this.httpBase + path, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
    });
    let data = null;
    try {
      data = await response.json();
    } catch {
      throw new ScoreError("bad_response", `HTTP ${response.status} without JSON`);
    }
    if (!response.ok) throw new ScoreError(data.error || `http_${response.status}`, data.message, undefined, data);
    return data;
  }

  async register(name, password) {
    return this._useLogin(await this._post("/api/register", { name, password }));
  }

  /** Log in. This browser's device token for the account (kept from its last login here) goes
   * with it: the server limits a known device's attempts on their own, so strangers guessing
   * the password cannot lock the player out from here. */
  async login(name, password) {
    const device = this.storage ? this.storage.getItem(deviceKey(name)) || undefined : undefined;
    return this._useLogin(await this._post("/api/login", { name, password, device }));
  }

  /** The login token: this client's, or the one kept in `storage` by an earlier page. */
  _loginToken() {
    return this._token || (this.storage ? this.storage.getItem(TOKEN_KEY) : null);
  }

  _forgetLogin() {
    this._token = null;
    if (this.storage) this.storage.removeItem(TOKEN_KEY);
  }

  async _useLogin(data) {
    this._token = data.token; // kept in memory too: with `storage: null` the login still holds
    if (this.storage) this.storage.setItem(TOKEN_KEY, data.token);
    if (this.storage && data.device) this.storage.setItem(deviceKey(data.name), data.device);
    if (this._ws) await this._auth(data.token);
    return this.whoami();
  }

  /** Erase this player's account (their password confirms it); results stay, nameless. */
  async deleteAccount(password) {
    const token = this._loginToken();
    if (!token) throw new ScoreError("auth_failed", "not logged in");
    const response = await fetch(`${this.httpBase}/api/me`, {
      method: "DELETE",
      headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
      body: JSON.stringify({ password }),
    });
    const data = await response.json();
    if (!response.ok) {
      const error = new ScoreError(data.error, data.message, undefined, data);
      if (error.reason === "wrong_password") error.words = "Wrong password: the account was not deleted.";
      throw error;
    }
    if (this.storage && this.identity.name) this.storage.removeItem(deviceKey(this.identity.name));
    await this.logout();
    return data;
  }

  /** This player's own results, newest first: [{game_id, session_id, score, created_at,
   * held, held_reason, words}]; `words` says why a result is off the boards, if it is. */
  async myResults() {
    const token = this._loginToken();
    if (!token) throw new ScoreError("auth_failed", "not logged in");
    const response = await fetch(`${this.httpBase}/api/me`, { headers: { authorization: `Bearer ${token}` } });
    const data = await response.json();
    if (!response.ok) throw new ScoreError(data.error, data.message);
    return data.results.map((r) => ({ ...r, words: r.held_reason ? explain(r.held_reason) : null }));
  }

  /** Set a new password with the one-time reset code an organiser gave the player
   * (`scoreserver users reset-password NAME`, or /admin); logs in with it. */
  async resetPassword(name, code, password) {
    return this._useLogin(await this._post("/api/reset-password", { name, code, password }));
  }

  /** Forget the login; the connection continues as a guest. */
  async logout() {
    this._forgetLogin();
    this._closeSocket();
    this.identity = { user_id: null, name: null };
    return this.whoami();
  }

  // --- the socket --------------------------------------------------------------------------

  async _resolveSocketUrl() {
    if (this.socketUrl) return this.socketUrl;
    const response = await fetch(this.httpBase + "/api/config");
    if (!response.ok) throw new ScoreError("no_config", "cannot find the game socket");
    const config = await response.json();
    const http = new URL(this.httpBase);
    const scheme = http.protocol === "https:" ? "wss:" : "ws:";
    this.socketUrl = `${scheme}//${http.hostname}:${config.ws_port}/`;
    return this.socketUrl;
  }

  /** Open the socket (and log in with a kept token). Called by every method that needs it. */
  async connect() {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) return;
    if (!this._opening) {
      this._opening = this._open().finally(() => {
        this._opening = null;
      });
    }
    return this._opening;
  }

  async _open() {
    const url = await this._resolveSocketUrl();
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new ScoreError("connect_failed", `cannot reach ${url}`));
    });
    this._ws = ws;
    this._closedByUs = false;
    ws.onmessage = (event) => this._onMessage(event.data);
    ws.onclose = (event) => this._onClose(ws, event);
    ws.onerror = null;
    const token = this._loginToken();
    if (token) {
      try {
        await this._auth(token);
      } catch (error) {
        if (error.code !== "auth_failed") throw error;
        this._forgetLogin(); // expired or banned: play as a guest, and say why
        this._emit("logged_out", { reason: error.reason, banned_until: error.bannedUntil, words: error.words });
      }
    }
  }

  async _auth(token) {
    const identity = await this._request({ type: "auth", token });
    this._setIdentity(identity);
  }

  _closeSocket() {
    if (this._ws) {
      this._closedByUs = true;
      this._ws.close(1000);
      this._ws = null;
    }
  }

  /** Close the connection for good. */
  close() {
    this._closeSocket();
  }

  _request(message) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ScoreError("disconnected", "the game socket is not open"));
    }
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new ScoreError("timeout", `no answer to ${message.type}`));
      }, REQUEST_TIMEOUT_MS);
      this._pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...message, id }));
    });
  }

  _onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this._emit("error", new ScoreError("bad_json", "the server sent something unreadable"));
      return;
    }
    const waiting = message.id !== undefined ? this._pending.get(message.id) : undefined;
    if (waiting) {
      this._pending.delete(message.id);
      clearTimeout(waiting.timer);
      if (message.type === "error") {
        waiting.reject(new ScoreError(message.code, message.message, message.url, message));
      }
      else waiting.resolve(message);
      return;
    }
    if (message.type === "end_game") {
      if (this.game) this.game._ended(message);
    } else if (message.type === "leaderboard") {
      this._emit("leaderboard", message);
    } else if (message.type === "error") {
      this._emit("error", new ScoreError(message.code, message.message));
    }
  }

  _onClose(ws, event) {
    if (ws !== this._ws) return;
    this._ws = null;
    for (const [, waiting] of this._pending) {
      clearTimeout(waiting.timer);
      waiting.reject(new ScoreError("disconnected", "the game socket closed"));
    }
    this._pending.clear();
    if (this._closedByUs) return;
    this._emit("disconnect", { code: event.code, reason: event.reason });
    if (this.game && this.game.running) this._reconnect();
    else if (this._roomWs) this._rejoin();
  }

  async _reconnect() {
    const game = this.game;
    for (let attempt = 0; attempt < 8 && game.running; attempt++) {
      await new Promise((r) => setTimeout(r, Math.min(4000, 250 * 2 ** attempt)));
      try {
        const resumed = await this._resumeGame(game);
        if (resumed.type === "game_started") game._resumed(resumed);
        else if (resumed.type === "end_game") game._ended(resumed);
        this._emit("reconnect", { attempt: attempt + 1 });
        // The new connection (perhaps to another server) joins the room again, for its board.
        this.enter().catch(() => {});
        return;
      } catch (error) {
        if (error.code === "unknown_session") break;
      }
    }
    // The game cannot be had again (its server lost it, or stayed away): it ends here, in
    // words, and the next start() begins a new one.
    if (game.running) game._ended({ type: "end_game", reason: "disconnected", server_ts: null });
  }

  /** Between games: connect again with back-off, log in, and re-enter the room, so the board
   * keeps coming and start() is ready (a server restart, a dropped network). */
  async _rejoin() {
    for (let attempt = 0; attempt < 30 && !this._ws && !this._closedByUs; attempt++) {
      await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
      if (this._ws || this._closedByUs || (this.game && this.game.running)) return;
      try {
        await this.enter();
        this._emit("reconnect", { attempt: attempt + 1 });
        return;
      } catch {
        // not yet: try again
      }
    }
  }

  /** Resume `game` on the server that has it: a node without it answers `session_elsewhere`
   * with the URL of the one that has it, and the client moves there (a few hops at most). */
  async _resumeGame(game) {
    for (let hop = 0; ; hop++) {
      await this.connect();
      try {
        return await this._request({ type: "resume", start_token: game.startToken });
      } catch (error) {
        if (error.code !== "session_elsewhere" || !error.url || hop >= 3) throw error;
        this._closeSocket();
        this.socketUrl = error.url;
        this._emit("moved", { url: error.url });
      }
    }
  }

  _setIdentity(identity) {
    this.identity = { user_id: identity.user_id, name: identity.name };
    this._emit("identity", this.identity);
  }

  // --- the game flow -----------------------------------------------------------------------

  /** Who the server thinks the player is: {user_id, name}; nulls for a guest. */
  async whoami() {
    await this.connect();
    this._setIdentity(await this._request({ type: "whoami" }));
    return this.identity;
  }

  /** Ask who the player is and enter the game's room. Returns {game_id, duration_ms}. */
  async enter() {
    await this.whoami();
    const room = await this._request({
      type: "enter_game_room",
      game_id: this.gameId,
      user_id: this.identity.user_id,
    });
    this.durationMs = room.duration_ms;
    this._roomWs = this._ws; // the room is this connection's: a new one enters again
    this._emit("room", room);
    // A guest is told before playing that scores are not saved unless logged in.
    if (this.identity.user_id === null) this._emit("guest", { words: explain("guest") });
    return room;
  }

  /** Start a game: resolves to a Game once the server's timer runs. Works after any drop,
   * a server restart included: a new connection logs in again and re-enters the room. */
  async start() {
    await this.connect();
    if (this.durationMs === null || this._roomWs !== this._ws) await this.enter();
    const clientTs = now();
    const started = await this._request({ type: "game_start", client_ts: clientTs });
    this.game = new Game(this, started);
    this._emit("start", started);
    return this.game;
  }

  /** Submit a finished game: over the socket, or over HTTP if the socket is gone. */
  async submit(game = this.game) {
    if (!game) throw new ScoreError("no_game", "no game to submit");
    const body = game.submission();
    let result;
    try {
      await this.connect();
      result = await this._request({ type: "submit_result", ...body });
    } catch (error) {
      if (error instanceof ScoreError && error.code.startsWith("bad_")) throw error;
      // Known by the login token, a player's own failed submission is held against them,
      // not against whoever shares their address.
      const token = this.loggedIn ? this._loginToken() : null;
      result = await this._post("/api/results", body, token);
    }
    if (!result.accepted) result = { ...result, words: explain(result.reason) };
    else if (result.held) result = { ...result, words: explain(result.held_reason) };
    this._emit("result", result);
    return result;
  }

  /** The game's leaderboard over HTTP: {game_id, entries}. */
  async leaderboard({ limit = 10, offset = 0, around = null, window = "all" } = {}) {
    const query = new URLSearchParams({ limit, offset, window });
    if (around !== null) query.set("around", around);
    const response = await fetch(`${this.httpBase}/api/games/${encodeURIComponent(this.gameId)}/leaderboard?${query}`);
    const data = await response.json();
    if (!response.ok) throw new ScoreError(data.error, data.message);
    return data;
  }
}

/** One game session, from game_started to its result. */
class Game {
  constructor(client, started) {
    this.client = client;
    this.sessionId = started.session_id;
    this.startToken = started.start_token;
    this.durationMs = started.duration_ms;
    this.serverStart = started.server_ts;
    this.clientStart = now();
    this.points = []; // {token, client_ts} of every accepted point
    this.endToken = null;
    this.endReason = null;
    this.running = true;
    this.ended = new Promise((resolve) => {
      this._resolveEnded = resolve;
    });
    this.result = this.ended.then((end) =>
      end.reason === "time_up" && client.autoSubmit
        ? client.submit(this)
        : ((reason) => ({ type: "result", accepted: false, reason, words: explain(reason) }))(
            end.reason === "time_up" ? "not_submitted" : "session_voided",
          ),
    );
    this.result.catch(() => {}); // a page that never awaits it must not see an unhandled rejection
  }

  /** Milliseconds left by the server's clock, as far as this page can tell. */
  get remainingMs() {
    if (!this.running) return 0;
    return Math.max(0, this.durationMs - (now() - this.clientStart));
  }

  /** Send a point. Resolves to {accepted: true, seq} or {accepted: false, reason}.
   * `at`: the input event that scored it (or its `timeStamp`), so that the point is stamped
   * when the player acted, not when a busy page got round to it. */
  async point(at) {
    // Never before the last stamp: stamps go forward, whichever way each was taken.
    const clientTs = Math.max(stampAt(at), this._lastStamp || 0);
    this._lastStamp = clientTs;
    let reply;
    try {
      reply = await this.client._request({ type: "point", client_ts: clientTs });
    } catch (error) {
      const reason = error.code || "disconnected";
      const rejected = { accepted: false, reason, words: explain(reason) };
      this.client._emit("reject", rejected);
      return rejected;
    }
    if (reply.type === "point_accepted") {
      this.points.push({ token: reply.token, client_ts: clientTs });
      const accepted = { accepted: true, seq: reply.seq, score: this.points.length };
      this.client._emit("point", accepted);
      return accepted;
    }
    const rejected = { accepted: false, reason: reply.reason, words: explain(reply.reason) };
    this.client._emit("reject", rejected);
    return rejected;
  }

  /** The body of submit_result / POST /api/results. */
  submission() {
    return { start_token: this.startToken, end_token: this.endToken || "", points: this.points };
  }

  _resumed(started) {
    if (typeof started.remaining_ms === "number") {
      this.clientStart = now() - (this.durationMs - started.remaining_ms);
    }
  }

  _ended(end) {
    if (!this.running) return;
    const left = this.remainingMs; // by this page's clock, for an end the server did not date
    this.running = false;
    this.endToken = end.end_token || null;
    this.endReason = end.reason;
    // The time left when it ended (a game stopped early keeps what was left on its clock).
    this.stoppedWithMs =
      typeof end.server_ts === "number" ? Math.max(0, this.durationMs - (end.server_ts - this.serverStart)) : left;
    this.client._emit("end", { ...end, words: explain(end.reason), remaining_ms: this.stoppedWithMs });
    this._resolveEnded(end);
  }
}

  ScoreClient.setWords = setWords;
  ScoreClient.explain = explain;
  ScoreClient.ScoreError = ScoreError;
  ScoreClient.readReceipt = readReceipt;
  ScoreClient.verifyReceipt = verifyReceipt;
  ScoreClient.Game = Game;
  globalThis.ScoreClient = ScoreClient;
})();
