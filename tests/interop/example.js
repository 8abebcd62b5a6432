'use strict';
// Using the npm @krmx/client with an emitter server. `node example.js ws://127.0.0.1:8787/` runs it against a running
// server (such as `just conformance`); interop/test/example.test.js runs it against the conformance server.

// On Node 20 there is no global WebSocket (browsers and Node 22+ have one): give @krmx/client the `ws` package's.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = require('ws');
}
const { createClient } = require('@krmx/client');

async function run(url) {
  const client = createClient();
  client.on('join', (username) => console.info(`${username} joined`));
  client.on('message', (message) => console.info('message', message));

  await client.connect(url);
  await client.link('simon');           // rejects with the server's reason, e.g. 'invalid username'
  const reply = client.waitFor('message', (message) => message.type === 'test/echoed');
  client.send({ type: 'test/echo', payload: { text: 'hello' } });
  const [echoed] = await reply;

  await client.leave();                 // the user leaves; the connection stays open
  await client.disconnect();
  return echoed;
}

module.exports = { run };

if (require.main === module) {
  run(process.argv[2] ?? 'ws://127.0.0.1:8787/').then(
    (echoed) => console.info('echoed', echoed.payload),
    (error) => {
      console.error(error.message);
      process.exitCode = 1;
    },
  );
}
