/** A last-in-first-out stack of teardown steps, run once on success, error, Ctrl-C or SIGTERM. */

type Step = { what: string; run: () => Promise<void> | void };

const steps: Step[] = [];
let running: Promise<void> | undefined;

/** Whether teardown has begun (after a signal, an error or the end); work in flight should stop quietly. */
export function tearingDown(): boolean {
  return running !== undefined;
}

/** Registers a teardown step; steps run in reverse order of registration. */
export function onCleanup(what: string, run: Step['run']): void {
  steps.push({ what, run });
}

/** Runs every registered step once, reporting (not throwing) failures. */
export function cleanup(): Promise<void> {
  running ??= (async () => {
    for (let step = steps.pop(); step !== undefined; step = steps.pop()) {
      try {
        await step.run();
      } catch (err) {
        process.stderr.write(`cleanup: ${step.what} failed: ${err instanceof Error ? err.message : String(err)}\n`);
      }
    }
  })();
  return running;
}

/** On SIGINT/SIGTERM, tears everything down and exits 130/143; a second signal exits at once. */
export function cleanupOnSignals(): void {
  const handle = (signal: NodeJS.Signals, code: number): void => {
    process.on(signal, () => {
      if (running !== undefined) process.exit(code);
      process.stderr.write(`\n${signal}: stopping every process and removing temp dirs…\n`);
      void cleanup().finally(() => process.exit(code));
    });
  };
  handle('SIGINT', 130);
  handle('SIGTERM', 143);
}
