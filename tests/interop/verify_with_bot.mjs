// A user's session as Element's crypto (matrix-sdk-crypto, the wasm build Element Web
// uses) runs it, answering the bot's emoji verification request.
//
//   node verify_with_bot.mjs HOMESERVER USER_ID PASSWORD BOT_USER_ID [answer|ask]
//
// "answer" (default): wait for the bot's request and accept it. "ask": request the
// verification of the bot's session, as a user pressing "Verify" on it does, and start
// the emoji verification once the bot is ready.
// Logs in as a new session, uploads its keys and syncs. Prints one JSON line per step:
//   {"device_id": ...}                   logged in, keys uploaded
//   {"request": FLOW_ID}                 the request was accepted (or sent)
//   {"emoji": [[symbol, name], ...]}     what this session shows the user
//   {"done": true, "bot_device_verified": bool}  or  {"cancelled": reason}
// Reads "confirm" on stdin: the user pressing "They match".
import * as sdk from "@matrix-org/matrix-sdk-crypto-wasm";
import readline from "node:readline";

const [homeserver, userId, password, botId, mode = "answer"] = process.argv.slice(2);
const say = (obj) => console.log(JSON.stringify(obj));
let token = "";

async function api(method, path, body) {
  const response = await fetch(`${homeserver}/_matrix/client/v3${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: HTTP ${response.status} ${text}`);
  return text;
}

const login = JSON.parse(
  await api("POST", "/login", {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: userId },
    password,
    initial_device_display_name: "element-crypto",
  }),
);
token = login.access_token;

await sdk.initAsync();
const machine = await sdk.OlmMachine.initialize(
  new sdk.UserId(userId),
  new sdk.DeviceId(login.device_id),
);
await machine.updateTrackedUsers([new sdk.UserId(botId)]);

async function send(request) {
  let text;
  const t = sdk.RequestType;
  if (request.type === t.KeysUpload) text = await api("POST", "/keys/upload", request.body);
  else if (request.type === t.KeysQuery) text = await api("POST", "/keys/query", request.body);
  else if (request.type === t.KeysClaim) text = await api("POST", "/keys/claim", request.body);
  else if (request.type === t.SignatureUpload)
    text = await api("POST", "/keys/signatures/upload", request.body);
  else if (request.type === t.ToDevice)
    text = await api(
      "PUT",
      `/sendToDevice/${encodeURIComponent(request.event_type)}/${encodeURIComponent(request.txn_id)}`,
      request.body,
    );
  else return; // room messages and key backup are not used here
  if (request.id) await machine.markRequestAsSent(request.id, request.type, text);
}

async function flush() {
  for (const request of await machine.outgoingRequests()) await send(request);
}

let since;
async function syncOnce(timeoutMs) {
  const query = new URLSearchParams({ timeout: String(timeoutMs) });
  if (since) query.set("since", since);
  const data = JSON.parse(await api("GET", `/sync?${query}`));
  since = data.next_batch;
  const lists = data.device_lists ?? {};
  await machine.receiveSyncChanges(
    JSON.stringify(data.to_device?.events ?? []),
    new sdk.DeviceLists(
      (lists.changed ?? []).map((u) => new sdk.UserId(u)),
      (lists.left ?? []).map((u) => new sdk.UserId(u)),
    ),
    new Map(Object.entries(data.device_one_time_keys_count ?? {})),
    new Set(data.device_unused_fallback_key_types ?? []),
  );
  await flush();
}

let confirmWanted = false;
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "confirm") confirmWanted = true;
});

await flush();
await syncOnce(0);
say({ device_id: login.device_id });

let request;
let sas;
let shown = false;
let confirmed = false;
if (mode === "ask") {
  const [bot] = (await machine.getUserDevices(new sdk.UserId(botId))).devices();
  const [asked, out] = bot.requestVerification([sdk.VerificationMethod.SasV1]);
  await send(out);
  request = asked;
  say({ request: request.flowId });
}
const deadline = Date.now() + 60_000;
while (Date.now() < deadline) {
  await syncOnce(200);
  if (mode === "ask" && request.isReady() && !sas) {
    const [started, out] = await request.startSas();
    await send(out);
    sas = started;
  }
  if (!request) {
    request = machine
      .getVerificationRequests(new sdk.UserId(botId))
      .find((r) => !r.weStarted() && !r.isCancelled());
    if (request) {
      const ready = request.accept();
      if (ready) await send(ready);
      say({ request: request.flowId });
    }
  }
  if (request && !sas) {
    const verification = request.getVerification();
    if (verification instanceof sdk.Sas) {
      sas = verification;
      const accept = sas.accept();
      if (accept) await send(accept);
    }
  }
  if (sas && !shown && sas.emoji()) {
    shown = true;
    say({ emoji: sas.emoji().map((e) => [e.symbol, e.description]) });
  }
  if (sas && shown && confirmWanted && !confirmed) {
    confirmed = true;
    for (const out of await sas.confirm()) await send(out);
  }
  if (sas?.isDone()) {
    const bot = await machine.getDevice(new sdk.UserId(botId), sas.otherDeviceId);
    say({ done: true, bot_device_verified: bot !== undefined && bot.isLocallyTrusted() });
    process.exit(0);
  }
  if (request?.isCancelled() || sas?.isCancelled()) {
    say({ cancelled: (sas ?? request).cancelInfo?.reason ?? "cancelled" });
    process.exit(0);
  }
}
say({ cancelled: "timed out in the test client" });
process.exit(1);
