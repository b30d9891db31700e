// synapse-pg: the step runner's command line. Each step parses its flags, calls one step function and prints its
// result on stdout (dump: the dump's path as the last line). Failures print one sentence on stderr and exit 1.
// Passwords come only from the environment (SYNAPSE_PG_PASSWORD), never from a flag.
import { liftFence } from "../switch/fence";
import { PASSWORD_ENV } from "../names";
import { dockerEndpoint, engineLost, isLocalEndpoint, requireReachable } from "../docker/engine";
import { chooseHostFolders } from "../host/choose";
import { ProcessError } from "../docker/process";
import { StepError } from "../step-error";
import { parseContainerList, startSynapse, stopSynapse } from "../switch/synapse";
import { BEFORE_DOWNTIME } from "./before-downtime";
import { DOWNTIME } from "./downtime";
import { describeFlags, Flags, FlagSpecs, parseFlags } from "./flags";
import { SYNAPSE } from "./inputs";
import { listed, Out } from "./reports";
import { SERVING } from "./serving";
import { Step } from "./step";

export const STEPS: Record<string, Step> = { ...BEFORE_DOWNTIME, ...DOWNTIME, ...SERVING };

/** A step's flags as given on its command line: --synapse added where the step stops Synapse. */
export function flagsOf(step: Step): FlagSpecs {
    return step.stopsSynapse ? { ...step.flags, synapse: SYNAPSE } : step.flags;
}

function help(name?: string): string {
    const step = name === undefined ? undefined : STEPS[name];
    if (step) {
        return [
            `synapse-pg ${name}: ${step.summary}`,
            "",
            ...describeFlags(flagsOf(step)),
            "",
            `The database password is read from ${PASSWORD_ENV}, never from the command line.`,
        ].join("\n");
    }
    return [
        "synapse-pg <step> [flags]   (synapse-pg <step> --help for its flags)",
        "",
        ...Object.entries(STEPS).map(([n, s]) => `  ${n.padEnd(16)} ${s.summary}`),
    ].join("\n");
}

/** After a failure before the switch: the old cluster's fence lifted, Synapse started; what happened, as a sentence. */
async function backToOldCluster(old: string | undefined, synapse: string[]): Promise<string> {
    let lifted: string[] | undefined;
    try {
        lifted = old ? await liftFence(old) : undefined;
    } catch (err) {
        return ` ${(err as Error).message} Synapse was left stopped.`;
    }
    const started = synapse.length ? await startSynapse(synapse).catch(() => [] as string[]) : [];
    const back = lifted ? `"${old}" takes connections again (back on ${listed(lifted) || "its networks"})` : "";
    const synapseBack = started.length ? `Synapse (${started.join(", ")}) was started again on the old cluster` : "";
    return back || synapseBack ? ` ${[back, synapseBack].filter(Boolean).join(" and ")}.` : "";
}

async function runStep(name: string, step: Step, argv: string[], out: Out): Promise<void> {
    let flags: Flags | undefined;
    let synapse: string[] = [];
    let endpoint: string;
    let engineHere: boolean;
    // Before the step's own try: with an engine it cannot reach, not even Synapse is started again.
    try {
        endpoint = await dockerEndpoint();
        engineHere = isLocalEndpoint(endpoint);
        if (!engineHere) await requireReachable(endpoint);
    } catch (err) {
        console.error(`synapse-pg ${name}: ${(err as Error).message}`);
        process.exitCode = 1;
        return;
    }
    try {
        flags = parseFlags(flagsOf(step), argv);
        chooseHostFolders(
            engineHere,
            [flags.opt("old"), flags.opt("container"), flags.opt("new")],
            [flags.opt("image")],
        );
        synapse = parseContainerList(flags.opt("synapse"));
        if (step.stopsSynapse === "before" && synapse.length) {
            const stopped = await stopSynapse(synapse);
            if (stopped.length) out(`${name}: stopped Synapse (${stopped.join(", ")})`);
        }
        await step.run(flags, out);
    } catch (err) {
        // Nothing more can be done on an engine that no longer answers, not even starting Synapse again.
        const lost = engineHere ? undefined : await engineLost(endpoint);
        if (lost) {
            console.error(`synapse-pg ${name}: ${lost}`);
            process.exitCode = 1;
            return;
        }
        let message =
            err instanceof StepError || err instanceof ProcessError
                ? err.message
                : `unexpected failure: ${(err as Error).stack}`;
        // Before the switch the old cluster is untouched and still the one Synapse is configured for: its fence
        // comes down first, so Synapse finds it.
        if (step.stopsSynapse === "before")
            message += await backToOldCluster(step.fencesOld ? flags?.opt("old") : undefined, synapse);
        console.error(`synapse-pg ${name}: ${message}`);
        process.exitCode = 1;
    }
}

export async function main(argv: string[]): Promise<void> {
    // For the benchmark: the step runner's own peak memory (children such as docker are not counted).
    if (process.env.SYNAPSE_PG_REPORT_RSS) {
        process.on("exit", () => process.stderr.write(`synapse-pg peak-rss-kb ${process.resourceUsage().maxRSS}\n`));
    }
    const [name, ...rest] = argv;
    if (!name || name === "--help" || name === "-h") return console.log(help());
    const step = STEPS[name];
    if (!step) {
        console.error(`synapse-pg: unknown step "${name}".\n${help()}`);
        process.exitCode = 2;
        return;
    }
    if (rest.includes("--help") || rest.includes("-h")) return console.log(help(name));
    await runStep(name, step, rest, (line) => console.log(line));
}
