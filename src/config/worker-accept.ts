/**
 * `[server] worker_accept`: how the workers of `[server] workers` > 1 get their connections.
 *
 * - "primary": the primary process accepts every connection and hands it to a worker in turn
 *   (node:cluster's round robin). Works on every Node; every new connection costs the primary a
 *   wake-up and an IPC message carrying the socket.
 * - "reuseport": each worker listens on the port itself with SO_REUSEPORT and the kernel spreads
 *   new connections over the workers' listeners; the primary accepts nothing. Needs Node ≥ 22.12
 *   (net.Server.listen's `reusePort`) on Linux.
 * - "auto" (default): "reuseport" where this Node supports it, else "primary".
 */
export type WorkerAcceptSetting = 'auto' | 'reuseport' | 'primary';
export type WorkerAccept = 'reuseport' | 'primary';

export const WORKER_ACCEPT_SETTINGS: readonly WorkerAcceptSetting[] = ['auto', 'reuseport', 'primary'];

/** `listen({ reusePort })` arrived in Node 22.12 and 23.1; we rely on it on Linux only (where SO_REUSEPORT balances). */
export function reusePortAvailable(nodeVersion: string = process.versions.node, platform: NodeJS.Platform = process.platform): boolean {
  if (platform !== 'linux') return false;
  const [major = 0, minor = 0] = nodeVersion.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/** The mode a setting means on this Node (validation has refused "reuseport" where it is unavailable). */
export function resolveWorkerAccept(setting: WorkerAcceptSetting, available: boolean = reusePortAvailable()): WorkerAccept {
  if (setting === 'primary') return 'primary';
  if (setting === 'reuseport') return 'reuseport';
  return available ? 'reuseport' : 'primary';
}
