'use strict';
// Runs interop/example.js, the npm client sample that docs/src/client.md shows, against the conformance server.

const { it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { within, startConformance } = require('../lib/support');
const { run } = require('../example');

let server;
before(async () => {
  server = await startConformance();
});
after(() => server.stop());

it('the documented @krmx/client sample runs against emitter', async () => {
  const info = console.info;
  console.info = () => {};
  try {
    const echoed = await within('the sample', run(server.main));
    assert.deepEqual(echoed, { type: 'test/echoed', payload: { text: 'hello' } });
  } finally {
    console.info = info;
  }
});
