// method pg_upgrade's prepare step, while Synapse still serves: the old binaries, the new cluster initialised
// and stopped with the old configuration, pg_upgrade --check, and a standby of the old cluster in the new location.
import {
    ContainerInfo,
    pgdataOf,
    pinnedReference,
    requireContainer,
    startContainer,
    stopContainer,
    superuserOf,
} from "../docker/containers";
import { query, serverVersion, waitUntilAccepting, whenAccepting } from "../docker/psql";
import { run } from "../docker/process";
import { requirePgUpgradeCompatible } from "./check";
import { OldBinaries, oldBinaries } from "./old-binaries";
import { startStagingContainer } from "../target/staging";
import { databasesSize } from "../dump/dump";
import { checkSpace, requireSafeRestartPolicy } from "../checks/preflight";
import { copyConfig, CopyConfigResult } from "../config/copy-config";
import { StepError } from "../step-error";
import { isStreaming, removeStandby, standbyBlocker, standbyContainerName, startStandby } from "./standby";
import { checkExtensions, ExtensionUpdate } from "../checks/extensions";
import { requireSameCollationRules } from "./collation";
import { requireFenceable } from "../switch/fence";
import { describeUnlogged, relationsNotReplicated } from "./not-replicated";
import { makeRoomForStaging, ourStaging, readTargetState, writeMarkerAt } from "../target/markers";
import { PgUpgradeInput, PrepareResult } from "./upgrade";
import { requireUpgradeWhereItBegan } from "../target/where-it-began";
import { hasPgUpgradeLeftovers, removeLeftoverPgUpgrade } from "./run";

type PrepareOptions = { standby?: boolean; config?: boolean; check?: boolean };

/** What prepare found out about the old cluster before it made anything. */
interface OldCluster {
    old: ContainerInfo;
    superuser: string;
    version: { text: string; major: number };
    binaries: OldBinaries;
    extensionUpdates: ExtensionUpdate[];
}

/**
 * Before Synapse stops: old binaries ready and proven to run, new cluster initialised with the old configuration
 * (unless `config` is false) and stopped, and (unless `standby` is false) a standby of the old cluster streaming
 * into the new location.
 */
export async function preparePgUpgrade(input: PgUpgradeInput, opts: PrepareOptions = {}): Promise<PrepareResult> {
    const found = await readOldCluster(input);
    await requireUpgradeWhereItBegan(input.container, input.staging, input.data, input.major);
    await removeLeftoverPgUpgrade(input.staging);
    const existing = await ourStaging(input.staging);
    const target = await readTargetState(input.data, input.major, input.image);
    const m = target.marker;
    const reusable =
        m?.state === "prepared" &&
        m.source.container === found.old.name &&
        m.source.imageId === found.old.imageId &&
        existing &&
        !existing.running &&
        !(await hasPgUpgradeLeftovers(input.staging, input.major));
    if (reusable) return prepareAgain(input, found, opts);
    // The standby mounts the new location: it goes first, so nothing of ours holds the location being made again.
    await removeStandby(standbyContainerName(input.staging));
    const setAsideTo = await makeRoomForStaging(input.data, input.major, input.image, target, existing);
    return prepareAnew(input, found, opts, setAsideTo);
}

/** The old cluster, running and fit for pg_upgrade: its binaries unpacked, its extensions, owner and collations. */
async function readOldCluster(input: PgUpgradeInput): Promise<OldCluster> {
    const old = await requireContainer(input.container, "old");
    if (!old.running)
        throw new StepError(
            `The old container "${input.container}" is not running; start it so the upgrade can be prepared.`,
        );
    requireSafeRestartPolicy(old);
    requireFenceable(old);
    const superuser = superuserOf(old);
    const version = await whenAccepting(input.container, superuser, () => serverVersion(input.container, superuser));
    const binaries = await oldBinaries(old, input.image, version.major);
    const [extensionUpdates] = await Promise.all([
        checkExtensions(old.name, superuser, input.image),
        requireSameOwner(old, input.image),
        requireSameCollationRules(old.name, superuser, input.image, version.major),
    ]);
    return { old, superuser, version, binaries, extensionUpdates };
}

/** The new cluster this old cluster's prepare made before, kept; its configuration and checks done again. */
async function prepareAgain(input: PgUpgradeInput, found: OldCluster, opts: PrepareOptions): Promise<PrepareResult> {
    const { old, superuser, binaries, extensionUpdates } = found;
    const withStandby = opts.standby !== false;
    const standbyName = standbyContainerName(input.staging);
    // The configuration again, as it is now (the user may have changed it since): the new cluster is started for
    // it and stopped cleanly again, as pg_upgrade wants it.
    let config: CopyConfigResult | undefined;
    if (opts.config !== false) {
        await startContainer(input.staging);
        await waitUntilAccepting(input.staging, superuser);
        config = await carryConfig(input);
        await stopContainer(input.staging);
    }
    // Again too: the old cluster may have changed since (a new column, a new extension).
    if (opts.check !== false) await requirePgUpgradeCompatible({ ...input, old, superuser, binaries: binaries.volume });
    if (!withStandby || (await isStreaming(standbyName, superuser)))
        return { binaries, reused: true, config, standby: withStandby ? standbyName : undefined, extensionUpdates };
    return { binaries, reused: true, config, extensionUpdates, ...(await prepareStandby(old, superuser, input)) };
}

/** A new cluster initialised as the old one is (locale, data checksums), its marker, and then the checks. */
async function prepareAnew(
    input: PgUpgradeInput,
    found: OldCluster,
    opts: PrepareOptions,
    setAsideTo: string | undefined,
): Promise<PrepareResult> {
    const { old, superuser, version, binaries, extensionUpdates } = found;
    const [[encoding, collate, ctype, checksums]] = await query(
        input.container,
        superuser,
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, current_setting('data_checksums') FROM pg_database WHERE datname = 'template1'",
    );
    await startStagingContainer({
        ...input,
        container: input.staging,
        superuser,
        locale: { encoding, collate, ctype },
        // pg_upgrade needs both clusters alike in data checksums; 18's initdb turns them on by default.
        initdbExtra: checksums === "on" ? "--data-checksums" : input.major >= 18 ? "--no-data-checksums" : undefined,
    });
    const config = opts.config !== false ? await carryConfig(input) : undefined;
    const source = { container: old.name, version: version.text, imageId: old.imageId };
    await writeMarkerAt(input.staging, input.major, {
        tool: "synapse-postgres",
        state: "prepared",
        major: input.major,
        method: "pg_upgrade",
        source: { ...source, pinned: await pinnedReference(old.imageId) },
        history: [{ state: "prepared", at: new Date().toISOString() }],
    });
    await stopContainer(input.staging);
    // On the stopped new cluster as pg_upgrade will find it, before a standby is made for nothing.
    if (opts.check !== false) await requirePgUpgradeCompatible({ ...input, old, superuser, binaries: binaries.volume });
    const standby =
        opts.standby !== false ? await prepareStandby(old, superuser, input) : { noStandby: "not asked for" };
    return { binaries, reused: false, setAsideTo, config, extensionUpdates, ...standby };
}

/**
 * The old configuration, carried into the running new cluster and checked by its server while Synapse still
 * serves: a setting it rejects, or one it cannot start with (restart-only settings restart it here), stops
 * prepare before any downtime, with the new cluster stopped. pg_upgrade's documented order puts this after the
 * upgrade, but pg_upgrade leaves the new cluster's configuration files as they are and runs its server with
 * them; copy-config, at the downtime, finds them in place (or carries what changed since).
 */
async function carryConfig(input: PgUpgradeInput): Promise<CopyConfigResult> {
    try {
        return await copyConfig({
            from: input.container,
            to: input.staging,
            settings: input.settings,
            drop: input.drop,
            dropAccessRules: input.dropAccessRules,
        });
    } catch (err) {
        await stopContainer(input.staging).catch(() => undefined);
        throw err;
    }
}

/** A standby of the old cluster in the new location, or why there is none; the upgrade works either way. */
async function prepareStandby(
    old: ContainerInfo,
    superuser: string,
    input: PgUpgradeInput,
): Promise<Pick<PrepareResult, "standby" | "noStandby" | "unlogged">> {
    const name = standbyContainerName(input.staging);
    const blocker = await standbyBlocker(old.name, superuser);
    if (blocker) return { noStandby: blocker };
    try {
        // The copy is written while Synapse serves, maybe on the disk the old server writes its WAL to: a full
        // disk there would stop the live server. Not enough room: no standby (preflight then says what to free).
        await checkSpace({ targetData: input.data }, await databasesSize(old.name, superuser));
        const [relations] = await Promise.all([
            relationsNotReplicated(old.name, superuser),
            startStandby(old, superuser, name, input.data),
        ]);
        return { standby: name, unlogged: describeUnlogged(relations) || undefined };
    } catch (err) {
        if (!(err instanceof StepError)) throw err;
        await removeStandby(name).catch(() => undefined);
        return { noStandby: err.message };
    }
}

/** The old data's owner must be the new image's postgres user, or pg_upgrade cannot read it (mode 0700). */
async function requireSameOwner(old: ContainerInfo, image: string): Promise<void> {
    const pgdata = pgdataOf(old);
    const owner = (await run("docker", ["exec", old.name, "stat", "-c", "%u", pgdata])).stdout.trim();
    const uid = (
        await run("docker", ["run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u", "postgres"])
    ).stdout.trim();
    if (owner !== uid) {
        throw new StepError(
            `The old data belongs to uid ${owner} but ${image} runs PostgreSQL as uid ${uid} (an Alpine image against a Debian one?), so pg_upgrade cannot read it; use the same image family, or set postgres:method to directory.`,
        );
    }
}
