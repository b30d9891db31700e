// A major upgrade: preflight, dump, restore, copy-config, verify and cutover, each a command resource running one
// step of the step runner, chained so that nothing after a failed step runs. The new cluster's serving container
// depends on the cutover (see stack.ts), so it never takes the alias before verify has passed.
import * as command from "@pulumi/command";
import * as pulumi from "@pulumi/pulumi";
import { dumpPathOf, DumpMethod } from "../runner/dump/dump";
import { DataLocation, formatDataLocation } from "../runner/target/layout";
import { shellQuote, stepCommand } from "./command-line";
import { PASSWORD_ENV } from "../runner/names";

/** directory and dumpall dump and restore; pg_upgrade keeps the data files (see runner/pg-upgrade/upgrade.ts, runner/pg-upgrade/standby.ts). */
export type UpgradeMethod = DumpMethod | "pg_upgrade";

export interface MajorUpgradeArgs {
    /** The old cluster's container. */
    fromContainer: pulumi.Input<string>;
    /** The new major, its image and data location. */
    toMajor: number;
    toImage: pulumi.Input<string>;
    toData: DataLocation;
    /** The staging container the restore (or prepare) creates and cutover removes. */
    stagingContainer: string;
    /** Host folder for the dump (dump methods only). */
    backupDir?: string;
    method: UpgradeMethod;
    /** The role and database Synapse logs in with, checked by verify with the password. */
    loginUser: pulumi.Input<string>;
    loginDatabase: pulumi.Input<string>;
    /** Secret; reaches the steps only through their environment. */
    password: pulumi.Input<string>;
    /** postgres:settings for the new cluster: checked by copy-config against the copied files. */
    settings?: Record<string, string>;
    /** postgres:dropSettings: rejected parameters copy-config may leave out of the new cluster. */
    dropSettings?: string[];
    /** postgres:dropAccessRules: rejected access rules copy-config may leave out of the new cluster. */
    dropAccessRules?: string[];
    /** Synapse's containers: every step but prepare stops them first and starts them again if it fails before the switch. */
    synapseContainers: string[];
    /** Every step's trigger: a new attempt runs the whole upgrade again from a fresh dump. */
    attempt: number;
    /** Resources the first step waits for (the old container, the new data volume). */
    after: pulumi.Input<pulumi.Resource>[];
}

/** The steps of each method, in order. */
export const STEPS = {
    dump: ["preflight", "dump", "restore", "copy-config", "verify", "cutover"],
    pg_upgrade: ["prepare", "preflight", "upgrade", "copy-config", "verify", "cutover"],
} as const;
type Step = (typeof STEPS)["dump"][number] | (typeof STEPS)["pg_upgrade"][number];

/** Steps that run while Synapse still serves (prepare makes pg_upgrade's standby): they get no --synapse, so they never stop it. */
const BEFORE_DOWNTIME: Step[] = ["prepare"];

export class MajorUpgrade extends pulumi.ComponentResource {
    readonly backupFile?: string;
    readonly steps: Partial<Record<Step, command.local.Command>>;
    readonly cutover: command.local.Command;
    readonly verified: pulumi.Output<string>;

    constructor(name: string, args: MajorUpgradeArgs, opts?: pulumi.ComponentResourceOptions) {
        super("synapse-postgres:index:MajorUpgrade", name, {}, opts);
        const dumpName = `${name}`;
        const physical = args.method === "pg_upgrade";
        if (!physical && args.backupDir === undefined) throw new Error(`${name}: a dump method needs backupDir`);
        this.backupFile = physical ? undefined : dumpPathOf(args.backupDir!, dumpName, args.method as DumpMethod);
        const data = formatDataLocation(args.toData);
        const secretEnv = { [PASSWORD_ENV]: pulumi.secret(args.password) };
        const newCluster = { new: args.stagingContainer, image: args.toImage, data, major: args.toMajor };
        // The configuration's inputs: copy-config's, and prepare's, which carries the configuration before the downtime.
        const configFlags = {
            ...(args.settings && Object.keys(args.settings).length ? { settings: JSON.stringify(args.settings) } : {}),
            ...(args.dropSettings?.length ? { drop: args.dropSettings.join(",") } : {}),
            ...(args.dropAccessRules?.length ? { "drop-access-rules": args.dropAccessRules.join(",") } : {}),
        };

        const lines: Record<
            Step,
            {
                create: pulumi.Output<string>;
                delete?: pulumi.Output<string>;
                environment?: Record<string, pulumi.Input<string>>;
            }
        > = {
            prepare: {
                create: stepCommand("prepare", { old: args.fromContainer, ...newCluster, ...configFlags }),
                // An upgrade taken out of the stack before its switch (or pulumi destroy): the standby prepare made
                // stops following the old server. After a switch there is none, and this does nothing.
                delete: stepCommand("remove-standby", { new: args.stagingContainer }),
                environment: secretEnv,
            },
            preflight: {
                create: stepCommand("preflight", {
                    old: args.fromContainer,
                    major: args.toMajor,
                    image: args.toImage,
                    data,
                    ...(physical
                        ? { new: args.stagingContainer }
                        : args.backupDir
                          ? { "backup-dir": args.backupDir }
                          : {}),
                    "login-user": args.loginUser,
                    "login-database": args.loginDatabase,
                }),
                environment: secretEnv,
            },
            dump: {
                // The new major's pg_dumpall, as PostgreSQL recommends for upgrades.
                create: stepCommand("dump", {
                    old: args.fromContainer,
                    "backup-dir": args.backupDir ?? "",
                    name: dumpName,
                    method: args.method,
                    "tool-image": args.toImage,
                }),
                environment: secretEnv,
            },
            restore: {
                create: stepCommand("restore", {
                    new: args.stagingContainer,
                    image: args.toImage,
                    data,
                    major: args.toMajor,
                    dump: this.backupFile ?? "",
                    "login-user": args.loginUser,
                    old: args.fromContainer,
                }),
                environment: secretEnv,
            },
            upgrade: {
                create: stepCommand("upgrade", {
                    old: args.fromContainer,
                    ...newCluster,
                    "login-user": args.loginUser,
                }),
                environment: secretEnv,
            },
            "copy-config": {
                create: stepCommand("copy-config", {
                    old: args.fromContainer,
                    new: args.stagingContainer,
                    ...configFlags,
                }),
            },
            verify: {
                create: stepCommand("verify", {
                    old: args.fromContainer,
                    new: args.stagingContainer,
                    "login-user": args.loginUser,
                    "login-database": args.loginDatabase,
                }),
                environment: secretEnv,
            },
            cutover: {
                create: stepCommand("cutover", {
                    old: args.fromContainer,
                    new: args.stagingContainer,
                    data,
                    image: args.toImage,
                    major: args.toMajor,
                    database: args.loginDatabase,
                }),
            },
        };

        const synapse = args.synapseContainers.length ? { synapse: args.synapseContainers.join(",") } : {};
        let previous: pulumi.Input<pulumi.Resource>[] = args.after;
        const steps: Partial<Record<Step, command.local.Command>> = {};
        for (const step of physical ? STEPS.pg_upgrade : STEPS.dump) {
            const line = lines[step];
            const stopsSynapse = synapse.synapse && !BEFORE_DOWNTIME.includes(step);
            steps[step] = new command.local.Command(
                `${name}-${step}`,
                {
                    ...line,
                    create: stopsSynapse
                        ? pulumi.interpolate`${line.create} --synapse ${shellQuote(synapse.synapse!)}`
                        : line.create,
                    // A step that succeeded is history: a later change of its inputs (a new minor version, a password)
                    // is recorded and runs nothing, and its output stays what the step said. Not ignoreChanges: the
                    // engine keeps an ignored input's old value through a replacement too, so a new attempt would run
                    // the command lines of the first one, without the config changed since.
                    update: finishedStep(step),
                    triggers: [args.attempt],
                },
                {
                    parent: this,
                    // Each step starts only after the one before it succeeded: a failure stops the chain there.
                    dependsOn: previous,
                    // A new attempt (triggers) replaces prepare: the old one's delete, which removes the standby, runs
                    // first, so it never removes the standby the new one made.
                    deleteBeforeReplace: step === "prepare",
                },
            );
            previous = [steps[step]!];
        }
        this.steps = steps;
        this.cutover = steps.cutover!;
        this.verified = steps.verify!.stdout;

        this.registerOutputs({ backupFile: this.backupFile, verified: this.verified });
    }
}

/**
 * What a finished step runs when its inputs change: nothing but its stored output again (the provider passes it
 * in PULUMI_COMMAND_STDOUT), and a line that says so.
 */
export function finishedStep(step: Step): string {
    return `printf '%s\\n' "$PULUMI_COMMAND_STDOUT"; echo '${step}: done in an earlier pulumi up; its new inputs are recorded and nothing runs (bump postgres:attempt to run the upgrade again with them)' >&2`;
}
