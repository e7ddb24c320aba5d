// A paid API built with mppx, the MPP reference SDK (its evm charge, EIP-3009 authorization): the
// counterpart spendgate's MPP payments are tested against. It prints {"port"} once listening, then
// {"settled": {...}} for each payment it accepts. Settlement is recorded here instead of on a chain.
// `/mpp-only` drops the x402 offer mppx makes beside its MPP challenge; other paths keep both.
import http from 'node:http'
import { Mppx, NodeListener } from 'mppx/server'
import { charge } from 'mppx/evm/server'

const mppx = Mppx.create({
  methods: [
    charge({
      currency: process.env.TOKEN,
      chainId: 84532,
      decimals: 6,
      recipient: process.env.PAY_TO,
      authorization: { name: process.env.TOKEN_NAME, version: process.env.TOKEN_VERSION },
      settle: async ({ payload }) => {
        const reference = `0x${Buffer.from(payload.nonce ?? payload.signature).toString('hex').slice(0, 64)}`
        console.log(JSON.stringify({ settled: { from: payload.from, to: payload.to, value: payload.value, reference } }))
        return { reference }
      },
    }),
  ],
  secretKey: 'a local test secret of at least thirty-two bytes',
  realm: '127.0.0.1',
})

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, `http://${req.headers.host}`)
  const request = new Request(url, { method: req.method, headers: req.headers })
  const result = await mppx.charge({ amount: url.searchParams.get('amount') ?? '0.25' })(request)
  if (result.status === 402) {
    const challenge = result.challenge
    if (url.pathname === '/mpp-only') challenge.headers.delete('payment-required')
    return NodeListener.sendResponse(res, challenge)
  }
  return NodeListener.sendResponse(res, result.withReceipt(Response.json({ data: 'paid by mppx' })))
})
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: server.address().port })))
