// CommonJS handlers, one per style AWS Lambda's Node runtime accepts.

exports.asyncHandler = async (event, context) => ({
  style: "async",
  echo: event,
  functionName: context.functionName,
  awsRequestId: context.awsRequestId,
  invocationId: context.invocationId,
  revision: context.revision,
  remainingPositive: context.getRemainingTimeInMillis() > 0,
});

exports.plain = (event) => ({ style: "plain", echo: event });

exports.callback = (event, context, callback) => {
  setImmediate(() => (event.fail ? callback(new TypeError(event.fail)) : callback(null, { style: "callback", echo: event })));
};

exports.chatty = async (event) => {
  console.log("to stdout:", event.say);
  console.error("to stderr");
  if (event.fail) throw new RangeError("asked to fail");
  return { said: event.say };
};

let started = 0;

/** Logs, then waits until `event.together` invocations have started (a barrier: it only passes when they run
 * at once, interleaved on the one thread), then logs again. */
exports.interleaved = async (event) => {
  started += 1;
  console.log(`start ${event.n}`);
  while (started < event.together) await new Promise((resolve) => setTimeout(resolve, 5));
  console.log(`end ${event.n}`);
  return { n: event.n };
};
