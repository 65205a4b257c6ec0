import net from 'node:net'

/**
 * A loopback port nothing listens on (it was just closed): connecting is refused at once, and a
 * server a test starts can take it.
 */
export async function closedPort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => {
    server.listen(0, '127.0.0.1', resolve)
  })
  const {port} = server.address() as net.AddressInfo
  await new Promise((resolve) => {
    server.close(resolve)
  })
  return port
}
