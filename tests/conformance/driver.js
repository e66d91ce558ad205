// The JavaScript client behind the conformance operations (test_conformance.py), loaded
// into a page of the server as a module.
import * as S from "/static/scoreclient.js";
let client = null, game = null, seen = [];
const on = (c) => { for (const t of ["guest", "point", "reject", "end", "result", "disconnect", "reconnect", "room", "moved"]) c.addEventListener(t, (e) => seen.push([t, e.detail])); };
window.__op = async (op) => {
  if (op.do === "new") { if (client) client.close(); client = new S.ScoreClient({ gameId: op.game || "conf", storage: null, socketUrl: op.url || null }); seen = []; on(client); return {}; }
  if (op.do === "move") { client.socketUrl = op.url; client._ws.close(4000, "network gone"); return {}; }
  if (op.do === "seen") { return { seen: seen.some(([t]) => t === op.kind) }; }
  if (op.do === "register" || op.do === "login") {
    try { await client[op.do](op.name, op.password); return { ok: true }; }
    catch (e) { return { ok: false, code: e.code, words: e.words }; } }
  if (op.do === "enter") { if (op.game) { client.gameId = op.game; client.durationMs = null; }
    seen = []; const room = await client.enter(); return { ...room, guest_warned: seen.some(([t]) => t === "guest") }; }
  if (op.do === "start") { game = await client.start(); return {}; }
  if (op.do === "points") { let n = 0; for (let i = 0; i < op.n; i++) { const r = await game.point(); if (r.accepted) n++; if (op.spacing) await new Promise((r) => setTimeout(r, op.spacing * 1000)); } return { accepted: n }; }
  if (op.do === "result") { const r = await game.result; return { ...r, receipt: "receipt" in r, end: game.endReason }; }
  if (op.do === "drop") { client._ws.close(4000, "network gone"); return {}; }
  if (op.do === "words") { return Object.fromEntries(op.codes.map((c) => [c, S.explain(c)])); }
  throw new Error("unknown op " + op.do);
};
window.__ready = true;
