// The start check: the server a container is about to be created with is started for real first, while the
// current one still serves. `postgres -C` (settings.ts) exits before the server loads shared_preload_libraries,
// opens its SSL files or maps shared memory; a replacement that fails at any of those would be found only after
// the serving container was removed (a minor update, new settings) or after the switch (an upgrade).
//
// The throw-away server runs the declared image and command with the cluster's own configuration (every file in
// PGDATA that is not data: postgresql.conf, the access rules, SSL keys, include folders) over an empty cluster
// in memory, with no network, no listening address and no archiving: nothing it does reaches anything real.
import {
    ContainerInfo,
    mountsHoldingPgdata,
    ourContainer,
    pgdataOf,
    removeContainer,
    requireContainer,
} from "../docker/containers";
import { run, runPiped, ProcessError } from "../docker/process";
import { settingsOf, shmSizeFor } from "./server-command";
import { NO_ARCHIVING, STANDBY_FOLDER } from "../pg-upgrade/standby";
import { StepError } from "../step-error";
import { ourLabels } from "../names";

export interface StartCheckInput {
    /** The running container whose configuration files the new server gets. */
    from: string;
    /** The image the new container is declared with; by default the one `from` runs. */
    image?: string;
    /** The server command (serverCommand) the new container is declared with. */
    command: string[];
}

/**
 * PGDATA's folders that hold data, not configuration, and files a start writes itself. Before 18 the standby
 * prepare makes lives in the new cluster's PGDATA too: a whole copy of the old data, written while it is read.
 */
export const NOT_CONFIGURATION = [
    "base",
    "global",
    "pg_wal",
    "pg_xact",
    "pg_multixact",
    "pg_subtrans",
    "pg_commit_ts",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat",
    "pg_stat_tmp",
    "pg_twophase",
    "pg_replslot",
    "pg_logical",
    "pg_dynshmem",
    "pg_tblspc",
    "pg_upgrade_output.d",
    "log",
    "pg_log",
    "PG_VERSION",
    "postmaster.pid",
    "postmaster.opts",
    "current_logfiles",
    STANDBY_FOLDER,
];

/** How long the throw-away server gets to say it is ready, in tenths of a second. */
const READY_TENTHS = 600;

/**
 * Runs as the server's user in the throw-away container: an empty cluster, the configuration read from stdin
 * over it, then the server, until its postmaster.pid says "ready" (as pg_ctl -w waits) or it exits. The log goes
 * to stderr whatever the configuration says, so a refusal can be read.
 */
const SCRIPT = `
said() { grep -E 'FATAL|PANIC' "$1" | head -n 2 >&2; tail -n 3 "$1" >&2; }
initdb -N -D "$PGDATA" -U synapse_pg_start_check --auth=trust >/tmp/initdb.log 2>&1 || { said /tmp/initdb.log; exit 3; }
tar -x -p -f - -C "$PGDATA" || exit 3
"$@" -D "$PGDATA" -c listen_addresses= -c logging_collector=off -c log_destination=stderr >/tmp/server.log 2>&1 &
pid=$!
i=0
while [ $i -lt ${READY_TENTHS} ]; do
    if ! kill -0 $pid 2>/dev/null; then said /tmp/server.log; exit 1; fi
    if sed -n 8p "$PGDATA/postmaster.pid" 2>/dev/null | grep -q '^ready'; then kill -INT $pid; wait $pid; exit 0; fi
    sleep 0.1
    i=$((i + 1))
done
said /tmp/server.log
kill -QUIT $pid
exit 2
`;

export function startCheckName(from: string): string {
    return `${from}-start-check`;
}

/** Throws one sentence naming why the declared server would not start; `role` says what is left as it was. */
export async function requireServerStarts(input: StartCheckInput, role: string): Promise<void> {
    const from = await requireContainer(input.from, "running");
    const name = startCheckName(input.from);
    // One left by a killed step (it has --rm, but a killed client can leave it created or running).
    if (await ourContainer(name, "start-check")) await removeContainer(name);
    const image = input.image ?? from.image;
    const output = await startThrowAway(from, { ...input, image }, name);
    if (output === undefined) return;
    const said = /(?:FATAL|PANIC):\s*(.*)/.exec(output)?.[1] ?? output.trim().split("\n").slice(-2).join(" ");
    throw new StepError(
        `${image} would not start with postgres:settings and the configuration files of "${input.from}": ${said.trim()}; fix the setting or the file and run pulumi up again (the ${role} was not changed).`,
    );
}

/** The server's refusal and last log lines when it did not start, undefined when it did. */
async function startThrowAway(
    from: ContainerInfo,
    input: StartCheckInput & { image: string },
    name: string,
): Promise<string | undefined> {
    const pgdata = pgdataOf(from);
    const mount = mountsHoldingPgdata(from)[0]?.destination ?? pgdata;
    const uid = (await run("docker", ["exec", from.name, "stat", "-c", "%u", pgdata])).stdout.trim();
    const excludes = NOT_CONFIGURATION.map((entry) => `--exclude=./${entry}`);
    let failed: string | undefined;
    await runPiped(
        (stdout) =>
            run("docker", ["exec", "-u", uid, from.name, "tar", "-c", "-f", "-", "-C", pgdata, ...excludes, "."], {
                stdout,
            }),
        (stdin) =>
            run(
                "docker",
                [
                    "run",
                    "--rm",
                    "-i",
                    "--name",
                    name,
                    "--network",
                    "none",
                    "--user",
                    uid,
                    ...ourLabels("start-check"),
                    "--shm-size",
                    `${shmSizeFor(settingsOf(input.command))}m`,
                    "--tmpfs",
                    `${mount}:uid=${uid},mode=0700`,
                    "-e",
                    `PGDATA=${pgdata}`,
                    "--entrypoint",
                    "sh",
                    input.image,
                    "-c",
                    SCRIPT,
                    "sh",
                    ...input.command,
                    ...NO_ARCHIVING,
                ],
                { stdin },
            ).then(
                () => undefined,
                (err: Error) => {
                    if (!(err instanceof ProcessError)) throw err;
                    failed = err.stderrTail;
                },
            ),
    );
    return failed;
}
