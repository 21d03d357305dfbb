// The rehearsal's IAM decisions, by a full evaluator of AWS's policy language (conditions,
// wildcards, Not* elements): one JSON request a line on stdin, one answer a line on stdout, in order.
//   request: {"policies": [<identity policy>...], "principal": ARN, "action": "s3:GetObject",
//             "resource": ARN or "*", "account": "123456789012", "context": {key: value or [values]}}
//   answer:  {"decision": "Allowed" | "ImplicitlyDenied" | "ExplicitlyDenied"} or {"error": "..."}
import { createInterface } from 'node:readline';
import { runSimulation } from '@cloud-copilot/iam-simulate';

async function decide(line) {
  const r = JSON.parse(line);
  const result = await runSimulation(
    {
      request: {
        principal: r.principal,
        action: r.action,
        resource: { resource: r.resource, accountId: r.account },
        contextVariables: r.context ?? {},
      },
      identityPolicies: r.policies.map((policy, i) => ({ name: `policy${i}`, policy })),
      serviceControlPolicies: [],
      resourceControlPolicies: [],
    },
    {},
  );
  if (result.resultType === 'error') {
    return { error: result.errors.message ?? JSON.stringify(result.errors) };
  }
  return { decision: result.overallResult };
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  let answer;
  try {
    answer = await decide(line);
  } catch (e) {
    answer = { error: String(e) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
}
