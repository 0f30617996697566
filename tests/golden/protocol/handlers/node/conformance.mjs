// The conformance handler of the Node.js runtime: what every runtime's copy does (docs/protocol.md, "A new
// runtime"), driven by the golden exchanges in tests/golden/protocol/ through tests/invocation/test_protocol.py.

export async function handler(event, context) {
  if ("fail" in event) throw new RangeError(event.fail);
  if ("env" in event) return process.env[event.env] ?? null;
  if ("call" in event) {
    try {
      return { called: await context.call(event.call.method, event.call.params) };
    } catch (error) {
      if (!(error instanceof context.CallbackError)) throw error;
      return { call_failed: { type: error.type, message: error.message } };
    }
  }
  console.log("echo");
  return { echo: event.echo ?? null, invocation_id: context.invocationId, deadline: context.deadline, caller: context.caller };
}
