'use strict';
// The client half of Krmx State, for the interop tests: an @krmx/client plus the models of @krmx/state 0.0.1, glued
// together the way the reference's React bindings (state/client-react in github.com/simonkarman/krmx, not on npm) glue
// them, minus React. Each function registers one model on a client that is not linked yet, and returns what a test
// needs to drive it and to look inside it.
//
// What the reference glue does, and these do too:
// - on the client's own link and unlink, a projection resets to the mapper of the model's initial state for the
//   username '<init>', a stream resets to its initial state, the atoms are forgotten;
// - projection/set replaces the projection (and drops the optimistic actions), projection/delta patches it (and drops
//   the optimistic action with its id), projection/invalidate drops the optimistic action with its id;
// - a dispatch is first applied optimistically; an action without an optimistic handler is sent without an id;
// - a stream event dispatched here is sent with dispatcher `username || 'self'`, and an echo from the server is
//   applied as confirmed, removing the first optimistic event with the same hash.

const {
  isAtomSetMessage,
  isProjectionDeltaMessage,
  isProjectionInvalidateMessage,
  isProjectionSetMessage,
  isStreamAppendMessage,
} = require('@krmx/state');

const UNDEFINED_DISPATCHER = '<init>';

/** Calls `reset` whenever `client` itself links or unlinks. */
function onOwnLinkOrUnlink(client, reset) {
  const ifSelf = (username) => {
    if (username === client.getUsername()) {
      reset();
    }
  };
  client.on('link', ifSelf);
  client.on('unlink', ifSelf);
}

/**
 * A projection model on `client` under `domain`. Returns `{ dispatch, projection, confirmed, pending, counts }`:
 * `dispatch(action)` applies it optimistically and sends it (false when it was not sent), `projection()` is what a
 * user sees (optimistic actions applied), `confirmed()` the projection the server's messages made, `pending()` the
 * optimistic ids waiting for an answer, and `counts` how many sets, deltas and invalidates arrived.
 */
function registerProjection(client, domain, model) {
  const instance = model.spawnClient();
  const initial = () => model.spawnServer().projection(UNDEFINED_DISPATCHER);
  instance.set(initial());
  const counts = { sets: 0, deltas: 0, confirmations: 0, invalidates: 0, errors: [] };
  onOwnLinkOrUnlink(client, () => instance.set(initial()));
  client.on('message', (message) => {
    if (isProjectionSetMessage(message) && message.payload.domain === domain) {
      counts.sets += 1;
      instance.set(message.payload.projection);
    } else if (isProjectionDeltaMessage(message) && message.payload.domain === domain) {
      counts.deltas += 1;
      if (message.payload.optimisticId !== undefined) {
        counts.confirmations += 1;
      }
      try {
        instance.apply(message.payload.delta, message.payload.optimisticId);
      } catch (error) {
        counts.errors.push(`${error.message}: ${JSON.stringify(message)}`);
      }
    } else if (isProjectionInvalidateMessage(message) && message.payload.domain === domain) {
      counts.invalidates += 1;
      instance.releaseOptimistic(message.payload.optimisticId);
    }
  });
  return {
    dispatch(action) {
      if (client.getStatus() !== 'linked') {
        return false;
      }
      const result = instance.optimistic(client.getUsername() || UNDEFINED_DISPATCHER, action);
      if (!result.success) {
        return false;
      }
      client.send({ type: 'projection/action', payload: { domain, action, optimisticId: result.optimisticId } });
      return true;
    },
    projection: () => instance.projection(),
    // Private members of the reference's ProjectionClient, read for the tests' checks only.
    confirmed: () => structuredClone(instance.internalProjection),
    pending: () => instance.optimisticActions.map((entry) => entry.optimisticId),
    counts,
  };
}

/**
 * A stream model on `client` under `domain`. Returns `{ dispatch, state, optimisticState, pending }`: `state()` is the
 * fold of the events the server sent, `optimisticState()` that plus the optimistic events, and `pending()` how many
 * optimistic events are not confirmed (nor expired) yet.
 */
function registerStream(client, domain, model, props) {
  const stream = model.spawn(props);
  let confirmed = stream.initialState;
  let optimistic = stream.initialState;
  stream.onChange((state) => { confirmed = state; });
  stream.onOptimisticChange((state) => { optimistic = state; });
  onOwnLinkOrUnlink(client, () => stream.reset());
  client.on('message', (message) => {
    if (isStreamAppendMessage(message) && message.payload.domain === domain) {
      stream.dispatch(message.payload.dispatcher, message.payload.event);
    }
  });
  return {
    dispatch(event) {
      if (client.getStatus() !== 'linked') {
        return false;
      }
      const dispatcher = client.getUsername() || 'self';
      if (stream.dispatch(dispatcher, event, true) !== true) {
        return false;
      }
      client.send({ type: 'stream/append', payload: { domain, dispatcher, event } });
      return true;
    },
    state: () => confirmed,
    optimisticState: () => optimistic,
    // A private member of the reference's Stream, read for the tests' checks only.
    pending: () => stream.optimisticEvents.length,
  };
}

/** The atoms on `client`: `{ set(key, atom), values() }`. */
function registerAtoms(client) {
  let atoms = {};
  onOwnLinkOrUnlink(client, () => { atoms = {}; });
  client.on('message', (message) => {
    if (isAtomSetMessage(message)) {
      atoms = { ...atoms, [message.payload.key]: message.payload.atom };
    }
  });
  return {
    set(key, atom) {
      client.send({ type: 'atom/set', payload: { key, atom } });
    },
    values: () => atoms,
  };
}

/**
 * Asks examples/cards for its side of `domain` (`test/inspect`), and resolves with `{ server, client }`: the server's
 * value and `look()` of the client's state, taken in the same listener call in which the answer arrived. Everything
 * the server sent about `domain` before its answer has been applied by then, and nothing after it.
 */
function inspect(client, domain, look) {
  return new Promise((resolve) => {
    const off = client.on('message', (message) => {
      if (message.type === 'test/inspected' && message.payload.domain === domain) {
        off();
        resolve({ server: message.payload.value, client: look() });
      }
    });
    client.send({ type: 'test/inspect', payload: domain });
  });
}

module.exports = { registerProjection, registerStream, registerAtoms, inspect };
