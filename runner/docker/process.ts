// The one way the step runner starts a child process: arguments as an array (no shell), secrets only through the
// environment, output streamed with back-pressure, and a non-zero exit turned into an error that carries the last
// lines of stderr.
import { spawn } from "node:child_process";
import { Duplex, PassThrough, Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";

export interface RunOptions {
    /** Data for the child's stdin: a string, or a stream piped with back-pressure. */
    stdin?: string | Readable;
    /** Where stdout goes; when given, stdout is streamed there and not kept in memory. */
    stdout?: Writable;
    /** Extra environment for the child (e.g. PGPASSWORD), merged over this process's environment. */
    env?: NodeJS.ProcessEnv;
    /** Kept stdout is capped so a runaway query cannot fill memory. */
    maxStdoutBytes?: number;
}

export interface RunResult {
    stdout: string;
    stderr: string;
}

/** A child process that exited non-zero; `message` ends with the last lines of its stderr. */
export class ProcessError extends Error {
    constructor(
        readonly command: string,
        readonly exitCode: number | null,
        readonly stderrTail: string,
    ) {
        super(`${command} exited with ${exitCode ?? "a signal"}${stderrTail ? `: ${stderrTail}` : ""}`);
    }
}

const STDERR_TAIL_LINES = 12;

/** SYNAPSE_PG_TRACE=1: each child's start and duration on stderr, to see where a step's seconds go. */
export const TRACE = process.env.SYNAPSE_PG_TRACE === "1";
const T0 = Date.now();

export async function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
    if (!TRACE) return runChild(cmd, args, opts);
    const start = Date.now();
    try {
        return await runChild(cmd, args, opts);
    } finally {
        // Arguments only (never the environment, where passwords travel), shortened.
        process.stderr.write(
            `trace +${start - T0}ms ${Date.now() - start}ms ${[cmd, ...args].join(" ").replace(/\s+/g, " ").slice(0, 160)}\n`,
        );
    }
}

async function runChild(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
    const child = spawn(cmd, args, {
        env: { ...process.env, ...opts.env },
        stdio: ["pipe", "pipe", "pipe"],
    });
    const maxStdout = opts.maxStdoutBytes ?? 64 * 1024 * 1024;
    const kept: Buffer[] = [];
    let keptBytes = 0;
    let stderrTail: string[] = [];
    let stderrPartial = "";

    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk: string) => {
        const lines = (stderrPartial + chunk).split("\n");
        stderrPartial = lines.pop() ?? "";
        stderrTail = stderrTail.concat(lines.filter((l) => l.trim() !== "")).slice(-STDERR_TAIL_LINES);
    });

    const exited = new Promise<number | null>((resolve, reject) => {
        child.on("error", reject);
        child.on("close", (code) => resolve(code));
    });

    // A string goes through a pipeline too: written with end() alone, the EPIPE of a child that died would be an
    // unhandled error that ends this whole process.
    const feeding =
        opts.stdin === undefined
            ? Promise.resolve(child.stdin.end())
            : pipeline(
                  typeof opts.stdin === "string" ? Readable.from([Buffer.from(opts.stdin)]) : opts.stdin,
                  child.stdin,
              );
    const draining = opts.stdout
        ? pipeline(child.stdout, opts.stdout)
        : new Promise<void>((resolve) => {
              child.stdout.on("data", (chunk: Buffer) => {
                  if (keptBytes + chunk.length <= maxStdout) {
                      kept.push(chunk);
                      keptBytes += chunk.length;
                  }
              });
              child.stdout.on("end", resolve);
          });

    // A child that dies early closes its stdin: report the exit (with stderr), not the EPIPE of the feeder.
    const [code, feed, drain] = await Promise.allSettled([exited, feeding, draining]);
    if (stderrPartial.trim() !== "") stderrTail = stderrTail.concat(stderrPartial).slice(-STDERR_TAIL_LINES);
    const stderr = stderrTail.join("\n");
    const exitCode = code.status === "fulfilled" ? code.value : null;
    if (code.status === "rejected") throw code.reason;
    if (exitCode !== 0) throw new ProcessError(describe(cmd, args), exitCode, stderr);
    if (feed.status === "rejected") throw feed.reason;
    if (drain.status === "rejected") throw drain.reason;
    return { stdout: Buffer.concat(kept).toString("utf8"), stderr };
}

/**
 * Two children joined by a pipe, both through run: `produce` writes into the pipe, `consume` reads it (through
 * `via`, a transform, when given). Both must succeed; the producer's failure is reported first, since a consumer
 * that loses its input fails because of it.
 */
export async function runPiped(
    produce: (stdout: Writable) => Promise<unknown>,
    consume: (stdin: Readable) => Promise<unknown>,
    via: Duplex = new PassThrough(),
): Promise<void> {
    const [producer, consumer] = await Promise.allSettled([produce(via), consume(via)]);
    if (producer.status === "rejected") throw producer.reason;
    if (consumer.status === "rejected") throw consumer.reason;
}

/** `docker exec` / `docker run` plus its first words: enough to say which call failed, never an env value. */
function describe(cmd: string, args: string[]): string {
    return [cmd, ...args.filter((a) => !a.startsWith("-")).slice(0, 3)].join(" ");
}
