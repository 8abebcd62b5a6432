'use strict';
// emitter-state's JSON deltas (crates/emitter-state/src/delta.rs) against the real jsondiffpatch 0.5.0 from npm, the
// version @krmx/state pins. The reference ProjectionClient applies every `projection/delta` it receives with
// `jsondiffpatch.patch(projection, delta)`, the module-level default instance with no options, so that is the
// function the deltas emitter makes must satisfy.
//
// The cases come from crates/emitter-state/examples/delta_cases.rs: seeded random pairs of JSON values, most of them
// one value and an edit of it. EMITTER_DELTA_CASES and EMITTER_DELTA_SEED change how many and which.

const { it } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const jsondiffpatch = require('jsondiffpatch');
const { deltaCasesBinary } = require('../lib/support');

const COUNT = Number(process.env.EMITTER_DELTA_CASES ?? 2000);
const SEED = Number(process.env.EMITTER_DELTA_SEED ?? 1);

/** Runs the delta_cases example with `args` (and `input` on stdin); resolves with its stdout lines. */
function deltaCases(args, input) {
  const result = spawnSync(deltaCasesBinary(), args, { input, encoding: 'utf8', maxBuffer: 1 << 28 });
  if (result.error) {
    throw result.error;
  }
  assert.equal(result.status, 0, `delta_cases ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout.split('\n').filter((line) => line !== '');
}

/** Fails listing the first few failures, with their cases, so that one can be replayed. */
function assertNoFailures(failures, what) {
  const shown = failures.slice(0, 3).map((f) => JSON.stringify(f)).join('\n');
  assert.equal(failures.length, 0, `${failures.length} of ${COUNT} cases (seed ${SEED}) ${what}; the first:\n${shown}`);
}

let cases;
/** The cases with emitter's deltas, made once; each is parsed afresh where it is used. */
function emitterCases() {
  cases ??= deltaCases(['cases', String(COUNT), String(SEED)]);
  assert.equal(cases.length, COUNT);
  return cases;
}

it('jsondiffpatch.patch turns the left value into the right one with every delta emitter makes', (t) => {
  const failures = [];
  let changed = 0;
  emitterCases().forEach((line, index) => {
    // Two parses: one to patch (jsondiffpatch.patch changes it in place), one to compare with. A client, too, patches
    // a value it parsed from a message.
    const { left, delta } = JSON.parse(line);
    const { right } = JSON.parse(line);
    if (delta === null) {
      // No delta from emitter: the values must be the same to JavaScript too (2.0 and 2, say). jsondiffpatch.diff is
      // no judge of that: it compares objects in arrays by reference when the arrays share a primitive, and then
      // makes a delta between equal values.
      try {
        assert.deepStrictEqual(left, right);
      } catch (error) {
        failures.push({ index, line, problem: `emitter made no delta: ${error.message}` });
      }
      return;
    }
    changed += 1;
    try {
      assert.deepStrictEqual(jsondiffpatch.patch(left, delta), right);
    } catch (error) {
      failures.push({ index, line, problem: error.message });
    }
  });
  assertNoFailures(failures, 'were not patched to the right value');
  t.diagnostic(`${changed} deltas applied; ${COUNT - changed} cases had none`);
  assert.ok(changed > COUNT / 2, `only ${changed} of ${COUNT} cases had a delta`);
});

/** jsondiffpatch's own delta from `left` to `right`, if it makes one and its own patch applies it. */
function theirDelta(left, right) {
  // When its patch fails, jsondiffpatch logs the context it failed in before it throws.
  const log = console.log;
  console.log = () => {};
  try {
    const delta = jsondiffpatch.diff(left, right);
    assert.deepStrictEqual(jsondiffpatch.patch(structuredClone(left), structuredClone(delta)), right);
    return { delta };
  } catch {
    return { failed: true };
  } finally {
    console.log = log;
  }
}

it("emitter's patch applies jsondiffpatch.diff's deltas, moves included", (t) => {
  // The other way round, for Rust clients of a reference server. jsondiffpatch fails some cases itself: its diff
  // throws where an object loses a `constructor` member (it reads the inherited one and finds a function), and its
  // patch misreads an object delta with a `_t` member as an array delta. Only the cases it gets right itself are
  // passed on. The cases' strings are shorter than 60 characters, so there are no text deltas, which emitter's patch
  // does not apply.
  const input = [];
  let moves = 0;
  let ownFailures = 0;
  for (const line of emitterCases()) {
    const { left, right } = JSON.parse(line);
    const { delta, failed } = theirDelta(left, right);
    if (failed) {
      ownFailures += 1;
      continue;
    }
    if (delta === undefined) {
      continue;
    }
    const text = JSON.stringify({ left, delta, right });
    moves += text.includes(',3]') ? 1 : 0;
    input.push(text);
  }
  const answers = deltaCases(['patch'], input.join('\n') + '\n');
  assert.equal(answers.length, input.length);
  const failures = answers.flatMap((answer, index) => (answer === 'ok' ? [] : [{ case: input[index], answer }]));
  assertNoFailures(failures, `of jsondiffpatch's own deltas (${ownFailures} it fails itself were left out) were not applied`);
  assert.ok(moves > 0, 'no case had a move');
  t.diagnostic(`${input.length} deltas applied, ${moves} of them with moves; ${ownFailures} cases jsondiffpatch fails itself`);
});
