# The doctests in lib/ call the :default pool running the demo adapter.
{:ok, _} =
  Supervisor.start_link(
    [
      {Snakepit.Pool, name: :default, size: 2, adapter: "snakepit_bridge.examples.demo.DemoAdapter"}
    ],
    strategy: :one_for_one
  )

:ok = Snakepit.await_ready(:default, 30_000)
ExUnit.start()
