/**
 * @peculiar/x509, ready to use: its tsyringe dependency needs the Reflect metadata polyfill
 * loaded first (ESM evaluates imports in order), and it needs Node's webcrypto as provider.
 * @see https://github.com/PeculiarVentures/x509#-reflect-polyfill-required
 */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

// Typed against the DOM `Crypto`; Node's webcrypto implements it.
x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export { x509 };
