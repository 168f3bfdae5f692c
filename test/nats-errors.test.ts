/**
 * lib/nats.ts classifies NATS failures by the errors' classes and API codes,
 * never by their messages: what i6pnctl reports as "no JetStream" and as "NATS
 * did not complete the request" (exit 3) rests on these two predicates.
 */
import test from 'ava';
import { JetStreamApiError } from '@nats-io/jetstream';
import { ClosedConnectionError, NoRespondersError, RequestError, TimeoutError } from '@nats-io/transport-node';
import { isBucketGone, isConnectionFailure, isJetStreamMissing } from '../lib/nats.js';

const noResponders = () => new RequestError('no responders: $JS.API.INFO', { cause: new NoRespondersError('$JS.API.INFO') });
const notEnabled = () => Object.assign(new Error('jetstream is not enabled', { cause: noResponders() }), { name: 'JetStreamNotEnabled' });
const accountOff = () => new JetStreamApiError({ code: 503, err_code: 10039, description: 'jetstream not enabled for account' });

test('no JetStream: no responders to the API, nats.js JetStreamNotEnabled, the account code 10039, however deep the cause', (t) => {
  for (const e of [noResponders(), new NoRespondersError('$JS.API.INFO'), notEnabled(), accountOff(), new Error('opening the buckets', { cause: notEnabled() })]) {
    t.true(isJetStreamMissing(e), String(e));
  }
});

test('connection failures: timeouts, closed connections, requests that failed for another reason', (t) => {
  for (const e of [new TimeoutError(), new ClosedConnectionError(), new RequestError('request failed', { cause: new TimeoutError() }), new Error('put', { cause: new TimeoutError() })]) {
    t.true(isConnectionFailure(e), String(e));
  }
  t.false(isConnectionFailure(noResponders()), 'no responders is a missing JetStream, not a connection failure');
});

test('the message decides nothing: errors that merely say "timeout", "connection" or "no responders" are neither', (t) => {
  for (const e of [new Error('timeout'), new Error('connection refused by policy'), new Error('no responders'), new Error('jetstream not enabled'), 'timeout', null, undefined]) {
    t.false(isConnectionFailure(e), String(e));
    t.false(isJetStreamMissing(e), String(e));
  }
});

test('a bucket gone: the API code 10059 (stream not found), not a message', (t) => {
  t.true(isBucketGone(new JetStreamApiError({ code: 404, err_code: 10059, description: 'stream not found' })));
  t.false(isBucketGone(new JetStreamApiError({ code: 404, err_code: 10014, description: 'consumer not found' })));
  t.false(isBucketGone(new Error('stream not found')));
});
