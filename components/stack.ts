// What the stack declares for a validated config: the serving cluster, and while an upgrade is in progress (or
// until the old cluster is retired) the old cluster and the upgrade between them.
//
//   version=15                    -> cluster 15 serving
//   version=17, upgradeFrom=15    -> cluster 15 (source), upgrade 15->17, cluster 17 serving after cutover
//   version=17.6, upgradeFrom=15  -> the same; only the 17 container is replaced on the same data
//   version=15 (revert)           -> cluster 15 serving again; 17's container goes, its data is kept
//   version=17 (retire)           -> cluster 17 serving; 15's container goes, its data is kept
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { AdoptedFacts } from "../runner/checks/inspect";
import { clusterNames, DataLocation } from "../runner/target/layout";
import { Cluster } from "./cluster";
import { readAdopted } from "./adopt";
import { readMethodUnderway } from "./method-underway";
import { imageFor, readConfig, StackConfig } from "./config";
import { MajorUpgrade, UpgradeMethod } from "./upgrade";
import { Rehearsal } from "./rehearsal";

export interface StackOutputs {
    activeVersion: string;
    hostAlias: string;
    containers: pulumi.Output<string>[];
    backupFile?: string;
    verified?: pulumi.Output<string>;
    /** The rehearsal's JSON report (postgres:rehearse). */
    rehearsal?: pulumi.Output<string>;
}

/** The whole program: config, the adopted container if any, the method, the declarations, the outputs. */
export async function declareProgram(): Promise<Record<string, unknown>> {
    const config = readConfig();
    const adopted = config.adopt ? await readAdopted(config.adopt, config.dockerHost) : undefined;
    const method = config.method ?? (await defaultMethod(config, adopted));
    return stackOutputs(declareStack({ ...config, method }, adopted));
}

/**
 * pg_upgrade, the fast method, unless an upgrade under way uses another (begun when directory was the default):
 * that one is kept, so Pulumi does not re-plan steps that already ran. Asked only while an upgrade is declared.
 */
async function defaultMethod(cfg: StackConfig, adopted?: AdoptedFacts): Promise<UpgradeMethod> {
    const plan = upgradePlan(cfg, adopted);
    if (!plan || cfg.rehearse) return "pg_upgrade";
    const underway = await readMethodUnderway({
        data: plan.toData,
        major: plan.target,
        image: plan.toImage,
        backupDir: cfg.backupDir,
        dumpName: plan.name,
        dockerHost: cfg.dockerHost,
    });
    return underway.method ?? "pg_upgrade";
}

interface UpgradePlan {
    target: number;
    /** The upgrade's name: its resources' prefix and the dump's name. */
    name: string;
    toImage: string;
    toData: DataLocation;
}

/**
 * The upgrade a config declares (the new cluster's major, image and data location, the upgrade's name), if any:
 * one place for what declareStack declares and what defaultMethod asks about, so the two never look apart.
 */
function upgradePlan(cfg: StackConfig, adopted?: AdoptedFacts): UpgradePlan | undefined {
    const from = adopted ? { major: adopted.major, text: adopted.version } : cfg.upgradeFrom;
    const target = cfg.version.major;
    if (from === undefined || from.major >= target) return undefined;
    return {
        target,
        name: `upgrade-${from.major}-to-${target}`,
        toImage: imageFor(cfg.image, cfg.version.text),
        toData: adopted ? dataLocationBeside(cfg, adopted, target) : dataLocationOf(cfg, target),
    };
}

/** The stack's outputs, without the upgrade's while none is declared (Pulumi warns on undefined outputs). */
export function stackOutputs(s: StackOutputs): Record<string, unknown> {
    return Object.fromEntries(Object.entries(s).filter(([, v]) => v !== undefined));
}

function dataLocationOf(cfg: StackConfig, major: number): DataLocation {
    const names = clusterNames(cfg.containerPrefix, major);
    return cfg.dataRoot
        ? { kind: "folder", path: `${cfg.dataRoot}/${names.folder}` }
        : { kind: "volume", name: names.volume };
}

/** What a new cluster's data location is when upgrading away from an adopted container. */
function dataLocationBeside(cfg: StackConfig, adopted: AdoptedFacts, major: number): DataLocation {
    if (cfg.dataRoot) return dataLocationOf(cfg, major);
    if (adopted.data.kind === "folder") {
        // The guide's layout: ./pgsql15 -> ./pgsql17, beside the adopted folder.
        const parent = path.posix.dirname(adopted.data.path);
        const base = path.posix.basename(adopted.data.path);
        const sibling =
            /\d+$/.test(base) && base.endsWith(String(adopted.major))
                ? base.replace(/\d+$/, String(major))
                : `pgsql${major}`;
        return { kind: "folder", path: `${parent}/${sibling}` };
    }
    return dataLocationOf(cfg, major);
}

/** What every cluster of the stack is declared with, from the config or the adopted container. */
function commonArgs(cfg: StackConfig, adopted?: AdoptedFacts) {
    return {
        user: cfg.user ?? adopted?.user ?? "synapse",
        database: cfg.database ?? adopted?.database ?? "synapse",
        password: cfg.password,
        initdbArgs: cfg.initdbArgs,
        network: cfg.network ?? adopted?.network ?? "synapse",
        hostAlias: cfg.hostAlias ?? adopted?.hostAlias ?? "db",
        port: cfg.port,
        synapseContainers: cfg.synapseContainers,
        revertAcceptLoss: cfg.revertAcceptLoss,
        settings: cfg.settings,
        dockerHost: cfg.dockerHost,
    };
}

type CommonArgs = ReturnType<typeof commonArgs>;
type From = { major: number; text: string };

export function declareStack(cfg: StackConfig, adopted?: AdoptedFacts): StackOutputs {
    const target = cfg.version.major;
    const common = commonArgs(cfg, adopted);
    const from = adopted ? { major: adopted.major, text: adopted.version } : cfg.upgradeFrom;
    if (adopted && target < adopted.major) {
        throw new Error(
            `Invalid stack configuration:\n  - postgres:version is "${cfg.version.text}" but the adopted container "${adopted.container}" runs ${adopted.major}: a downgrade is not a revert; to go back, set postgres:version ${adopted.major}`,
        );
    }
    if (cfg.rehearse) return declareRehearsal(cfg, common, from!, adopted);
    if (from === undefined || from.major === target) return declareServing(cfg, common, adopted);
    return declareUpgrade(cfg, common, from, adopted);
}

function declareRehearsal(cfg: StackConfig, common: CommonArgs, from: From, adopted?: AdoptedFacts): StackOutputs {
    const target = cfg.version.major;
    const rehearsal = new Rehearsal(`rehearse-${from.major}-to-${target}`, {
        fromContainer: adopted?.container ?? clusterNames(cfg.containerPrefix, from.major).container,
        toMajor: target,
        toImage: imageFor(cfg.image, cfg.version.text),
        loginUser: common.user,
        loginDatabase: common.database,
        password: cfg.password,
        backupDir: cfg.backupDir,
        method: cfg.method ?? "pg_upgrade",
        attempt: cfg.attempt,
        dockerHost: cfg.dockerHost,
    });
    return { activeVersion: from.text, hostAlias: common.hostAlias, containers: [], rehearsal: rehearsal.report };
}

/** One cluster, serving: no upgrade declared (or the adopted container, serving as it is). */
function declareServing(cfg: StackConfig, common: CommonArgs, adopted?: AdoptedFacts): StackOutputs {
    const target = cfg.version.major;
    if (adopted && Object.keys(cfg.settings).length > 0) {
        throw new Error(
            `Invalid stack configuration:\n  - postgres:settings applies to the clusters this program runs, not to the adopted container "${adopted.container}": set them in its compose file, or keep them for the upgrade (they go to the new cluster)`,
        );
    }
    const cluster = new Cluster(`pg${target}`, {
        ...common,
        adopt: adopted?.container,
        major: target,
        image: imageFor(cfg.image, cfg.version.text),
        containerName: adopted?.container ?? clusterNames(cfg.containerPrefix, target).container,
        data: adopted?.data ?? dataLocationOf(cfg, target),
        serving: true,
    });
    return { activeVersion: cfg.version.text, hostAlias: common.hostAlias, containers: [cluster.containerName] };
}

function declareUpgrade(cfg: StackConfig, common: CommonArgs, from: From, adopted?: AdoptedFacts): StackOutputs {
    const target = cfg.version.major;
    const method = cfg.method ?? "pg_upgrade";
    if (cfg.backupDir === undefined && method !== "pg_upgrade") {
        throw new Error(
            `Invalid stack configuration:\n  - postgres:backupDir is required while upgrading from ${from.major} with method ${method}: the host folder the dump is written to`,
        );
    }
    if (cfg.backupCopyDir !== undefined && method === "pg_upgrade") {
        throw new Error(
            `Invalid stack configuration:\n  - postgres:backupCopyDir is set but method pg_upgrade writes no dump to copy: set postgres:method to directory or dumpall, or remove backupCopyDir`,
        );
    }
    const old = new Cluster(`pg${from.major}`, {
        ...common,
        adopt: adopted?.container,
        major: from.major,
        image: cfg.upgradeFromImage ?? imageFor(cfg.image, from.text),
        containerName: adopted?.container ?? clusterNames(cfg.containerPrefix, from.major).container,
        data: adopted?.data ?? dataLocationOf(cfg, from.major),
        // Declared exactly as when it served, so entering the upgrade does not touch the running old container.
        serving: false,
    });
    // The new cluster's container must wait for the upgrade's cutover, and the upgrade needs the new cluster's
    // data volume: the cluster is declared first with a promise of the cutover, kept when the upgrade exists.
    let cutoverDeclared!: (steps: pulumi.Resource[]) => void;
    const afterCutover = new Promise<pulumi.Resource[]>((resolve) => (cutoverDeclared = resolve));
    const { toImage, toData, name } = upgradePlan(cfg, adopted)!;
    const names = clusterNames(cfg.containerPrefix, target);
    const cluster = new Cluster(`pg${target}`, {
        ...common,
        major: target,
        image: toImage,
        containerName: names.container,
        data: toData,
        serving: true,
        startAfter: afterCutover,
    });
    const upgrade = new MajorUpgrade(name, {
        ...{ fromContainer: old.containerName, toMajor: target, toImage, toData, stagingContainer: names.staging },
        ...{ backupDir: cfg.backupDir, backupCopyDir: cfg.backupCopyDir, method },
        ...{ synapseContainers: cfg.synapseContainers, attempt: cfg.attempt },
        ...{ loginUser: common.user, loginDatabase: common.database, password: cfg.password },
        dockerHost: cfg.dockerHost,
        ...{ settings: cfg.settings, dropSettings: cfg.dropSettings, dropAccessRules: cfg.dropAccessRules },
        after: [old.container, cluster.volume].filter((r): r is NonNullable<typeof r> => r !== undefined),
    });
    cutoverDeclared([upgrade.cutover]);
    return {
        activeVersion: cfg.version.text,
        hostAlias: common.hostAlias,
        containers: [cluster.containerName, old.containerName],
        backupFile: upgrade.backupFile,
        verified: upgrade.verified,
    };
}
