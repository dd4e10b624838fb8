// How Element's crypto (matrix-sdk-crypto, the wasm build Element Web uses) sees devices.
//
//   node check_devices.mjs HOMESERVER ACCESS_TOKEN VIEWER_USER_ID USER_ID:DEVICE_ID...
//
// Fetches the keys with /keys/query under the viewer's access token, lets the library
// check every signature itself, and prints one JSON line: for each USER_ID:DEVICE_ID,
// whether the device is known and whether it is cross-signed by its owner.
import * as sdk from "@matrix-org/matrix-sdk-crypto-wasm";

const [homeserver, token, viewer, ...pairs] = process.argv.slice(2);
const devices = pairs.map((p) => {
  const at = p.lastIndexOf(":");
  return [p.slice(0, at), p.slice(at + 1)];
});

await sdk.initAsync();
const machine = await sdk.OlmMachine.initialize(
  new sdk.UserId(viewer),
  new sdk.DeviceId("INTEROPCHECK"),
);
await machine.updateTrackedUsers(devices.map(([user]) => new sdk.UserId(user)));
for (const request of await machine.outgoingRequests()) {
  if (request.type !== sdk.RequestType.KeysQuery) continue; // nothing is uploaded
  const response = await fetch(`${homeserver}/_matrix/client/v3/keys/query`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: request.body,
  });
  if (!response.ok) throw new Error(`/keys/query: HTTP ${response.status}`);
  await machine.markRequestAsSent(request.id, request.type, await response.text());
}

const result = {};
for (const [user, deviceId] of devices) {
  const device = await machine.getDevice(new sdk.UserId(user), new sdk.DeviceId(deviceId));
  result[`${user}:${deviceId}`] = {
    known: device !== undefined,
    cross_signed_by_owner: device !== undefined && device.isCrossSignedByOwner(),
  };
}
console.log(JSON.stringify(result));
