// The command line a command resource runs: `./bin/synapse-pg <step> --flag value ...`, every value
// shell-quoted. The only place the Pulumi layer names the step runner, so tests can assert exact commands.
import * as pulumi from "@pulumi/pulumi";

/**
 * Run from the project folder (the Pulumi program's working directory), where npm ci compiled the runner. The bin
 * script itself, not `npx synapse-pg`: npx takes a second to start, and every step of an upgrade is downtime.
 */
export const STEP_RUNNER = "./bin/synapse-pg";

/**
 * A step's environment: the Docker engine the provider uses (docker:host), which the step runner reaches as the
 * docker CLI does, through DOCKER_HOST, and the step's own variables. Undefined when there are none, so a stack
 * without docker:host declares its commands as before.
 */
export function stepEnvironment<T extends pulumi.Input<string> = string>(
    dockerHost: string | undefined,
    own: Record<string, T> = {},
): Record<string, T | string> | undefined {
    const env = { ...(dockerHost ? { DOCKER_HOST: dockerHost } : {}), ...own };
    return Object.keys(env).length ? env : undefined;
}

export function shellQuote(value: string): string {
    return /^[A-Za-z0-9_@%+=:,./-]+$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

export function stepCommand(step: string, flags: Record<string, pulumi.Input<string | number>>): pulumi.Output<string> {
    return pulumi
        .all(Object.values(flags))
        .apply((values) => stepLine(step, Object.fromEntries(Object.keys(flags).map((k, i) => [k, values[i]]))));
}

/**
 * The same for plain values: the invokes the program runs while it is evaluated. A value that starts with "-" is
 * written as --flag=value: the runner's parser (util.parseArgs) takes "--flag -x" for a flag without its value.
 */
export function stepLine(step: string, flags: Record<string, string | number>): string {
    const written = Object.entries(flags).flatMap(([k, v]) =>
        String(v).startsWith("-") ? [shellQuote(`--${k}=${v}`)] : [`--${k}`, shellQuote(String(v))],
    );
    return [STEP_RUNNER, step, ...written].join(" ");
}
