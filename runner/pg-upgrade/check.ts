// pg_upgrade --check before the downtime, as Spilo and autobase run it: the new image's pg_upgrade against the live
// old server and the prepared (stopped) new cluster, while Synapse still serves. It finds what the real run would
// stop on only after Synapse was stopped: reg* columns, data types the new major dropped, libraries of functions
// the new server cannot load, prepared transactions, and the rest of its list.
//
// A "live check" reads the old server's address from its postmaster.pid and the old data read-only. The old
// server's socket lives in its own container, so pg_upgrade is given a view of the old PGDATA (links to every
// entry, read-only underneath) whose postmaster.pid names 127.0.0.1 instead, reached from inside the old
// container's network namespace, as the standby's pg_basebackup is. Before it connects, pg_upgrade tries to start
// the old server on that view: the lock file names a live process of ours, so that start is refused at once.
import { ContainerInfo, mountsHoldingPgdata, ourContainer, pgdataOf, removeContainer } from "../docker/containers";
import { dataLayout, DataLocation, formatDataLocation } from "../target/layout";
import { OLD_ROOT, WRAPPERS } from "./old-binaries";
import { pgUpgradeFailure, TailWriter } from "./output";
import { ProcessError, run } from "../docker/process";
import { NO_ARCHIVING } from "./standby";
import { StepError } from "../step-error";
import { ourLabels } from "../names";

/** Where the old cluster's data is mounted for pg_upgrade (beside the new one, which may use the same path). */
export const OLD_DATA = "/synapse-pg-old-data";

export interface PgUpgradeCheckInput {
    old: ContainerInfo;
    superuser: string;
    /** The superuser's password, for a server whose access rules do not trust 127.0.0.1. */
    password: string;
    /** The stopped new cluster, prepared: its image, major, data location and staging container's name. */
    image: string;
    major: number;
    data: DataLocation;
    staging: string;
    /** The volume holding the old image's file system (old-binaries.ts). */
    binaries: string;
}

/** Lines of pg_upgrade's list files, marked so they are told apart from its own output. */
const LISTED = "synapse-pg-listed: ";

/**
 * Runs in the check's container as postgres: the view of the old PGDATA, a holder for its lock file, pg_upgrade
 * --check, then the lists pg_upgrade wrote of what it found, and its output folder removed (a folder left there
 * reads as an upgrade that stopped half-way, see pg-upgrade/upgrade.ts).
 */
const SCRIPT = `
old="$1"; view=/tmp/synapse-pg-old-view; shift
mkdir -m 0700 "$view" && ls -A "$old" | while read -r f; do ln -s "$old/$f" "$view/$f"; done || exit 3
rm -f "$view/postmaster.pid"
sleep 600 & holder=$!
{ echo $holder; sed -n 2,4p "$old/postmaster.pid"; echo 127.0.0.1; sed -n '6,$p' "$old/postmaster.pid"; } > "$view/postmaster.pid"
pg_upgrade --check --old-datadir "$view" "$@"
status=$?
kill $holder
if [ $status -ne 0 ]; then
    for f in "$NEW_PGDATA"/pg_upgrade_output.d/*/*.txt; do [ -f "$f" ] && head -n 20 "$f" | sed 's/^/${LISTED}/'; done
fi
rm -rf "$NEW_PGDATA/pg_upgrade_output.d"
exit $status
`;

export function pgUpgradeCheckName(staging: string): string {
    return `${staging}-pg-upgrade-check`;
}

/** Throws one sentence with what pg_upgrade --check refuses and where; returns when the clusters are compatible. */
export async function requirePgUpgradeCompatible(input: PgUpgradeCheckInput): Promise<void> {
    const { old } = input;
    const pgdata = pgdataOf(old);
    const layout = dataLayout(input.major);
    const log = new TailWriter("check: ");
    const name = pgUpgradeCheckName(input.staging);
    // One left by a killed step: created or running on, holding the new location and the name.
    if (await ourContainer(name, "staging")) await removeContainer(name);
    const oldData = mountsHoldingPgdata(old).flatMap((m) => [
        "-v",
        `${m.type === "volume" ? m.name : m.source}:${OLD_DATA}${m.destination}:ro`,
    ]);
    const newData = ["-v", `${formatDataLocation(input.data)}:${layout.mountTarget}`];
    const options = [
        ["--rm", "--init", "--name", name, "--network", `container:${old.name}`, "--user", "postgres"],
        [...ourLabels("staging"), "-e", "PGPASSWORD", "-e", `NEW_PGDATA=${layout.pgdata}`],
        [...oldData, ...newData, "-v", `${input.binaries}:${OLD_ROOT}:ro`, "--workdir", "/tmp"],
    ].flat();
    const check = [
        ["--old-bindir", WRAPPERS, "--new-datadir", layout.pgdata, "--username", input.superuser],
        ["--socketdir", "/tmp", `--new-options=${NO_ARCHIVING.join(" ")}`],
    ].flat();
    const script = ["--entrypoint", "sh", input.image, "-c", SCRIPT, "sh", `${OLD_DATA}${pgdata}`];
    const exited = await run("docker", ["run", ...options, ...script, ...check], {
        stdout: log,
        env: { PGPASSWORD: input.password },
    }).then(
        () => undefined,
        (err: Error) => err,
    );
    if (exited && !(exited instanceof ProcessError)) throw exited;
    const listed = listedItems(log.lines.filter((l) => l.startsWith(LISTED)).map((l) => l.slice(LISTED.length).trim()));
    const said = pgUpgradeFailure(
        log.lines.filter((l) => !l.startsWith(LISTED) && l.trim() !== "Failure, exiting"),
        exited !== undefined,
    );
    if (said === undefined) return;
    // The list pg_upgrade names by a file in the folder just removed: given here instead.
    const reason =
        listed.length > 0
            ? said.replace(/ is in the file: \S*pg_upgrade_output\.d\/\S+/, `: ${listed.join(", ")}`)
            : said;
    throw new StepError(
        `pg_upgrade --check of ${input.image} refuses the old cluster before the downtime, with Synapse serving on: ${reason}; fix it in the old cluster and run pulumi up again, or set postgres:method to directory.`,
    );
}

/** pg_upgrade's list files name a database on a line of its own, then its items: each item with its database. */
function listedItems(lines: string[]): string[] {
    let database: string | undefined;
    const items: string[] = [];
    for (const line of lines.filter(Boolean)) {
        const header = /^In database: (.*)$/.exec(line);
        if (header) database = header[1];
        else items.push(database === undefined ? line : `${line} (database ${database})`);
    }
    return items;
}
