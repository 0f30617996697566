// An ES module handler.
export const handler = async (event, context) => ({ module: "esm", echo: event, functionName: context.functionName });
