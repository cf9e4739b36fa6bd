# The demo behind `scripts/demo`: a pool of 2 Python workers running the
# bundled adapter (priv/python/snakepit_bridge/examples/demo.py).
#
#   mix run --no-start examples/demo.exs

# Quiet OTP's notice when the demo stops the application at the end.
Logger.configure(level: :info)
:logger.set_application_level(:kernel, :warning)

Application.put_env(:snakepit, :pools,
  default: [adapter: "snakepit_bridge.examples.demo.DemoAdapter", size: 2]
)

Snakepit.run_as_script(fn ->
  IO.puts("Snakepit demo: 2 Python workers running snakepit_bridge.examples.demo.DemoAdapter\n")

  IO.puts("add(a: 1, b: 2)            => #{inspect(Snakepit.execute("add", %{a: 1, b: 2}))}")

  IO.puts(
    "word_count(\"a b a\")        => #{inspect(Snakepit.execute("word_count", %{text: "a b a"}))}"
  )

  IO.puts("fibonacci(n: 10)           => #{inspect(Snakepit.execute!("fibonacci", %{n: 10}))}")

  {:error, error} = Snakepit.execute("add", %{a: 1, b: "two"})
  IO.puts("add(a: 1, b: \"two\")        => {:error, #{inspect(error)}}")

  IO.puts(
    "  its Python traceback ends with: " <>
      (error.python_traceback |> String.split("\n", trim: true) |> List.last())
  )

  {:error, error} = Snakepit.execute("nope", %{})
  IO.puts("nope()                     => {:error, #{inspect(error)}}")

  {:ok, info} = Snakepit.execute("describe", %{})
  IO.puts("\ndescribe() lists the tools:")

  for {name, %{"signature" => sig}} <- info["tools"] do
    IO.puts("  #{name}#{sig}")
  end

  session = Snakepit.new_session_id()
  {:ok, _} = Snakepit.execute_in_session(session, "remember", %{key: "lang", value: "elixir"})

  IO.puts(
    "\nin a session, remember(key: \"lang\") => " <>
      inspect(Snakepit.execute_in_session(session, "remember", %{key: "lang"}))
  )

  :ok = Snakepit.end_session(session)

  IO.puts(
    "stream of countdown(n: 5)   => " <>
      inspect(Snakepit.stream("countdown", %{n: 5}) |> Enum.to_list())
  )

  IO.puts("\n100 concurrent callers share the 2 workers; each worker keeps its own state:")

  answers =
    1..100
    |> Task.async_stream(fn _ -> Snakepit.execute("counter", %{}) end, max_concurrency: 100)
    |> Enum.count(&match?({:ok, {:ok, n}} when is_integer(n), &1))

  IO.puts("  #{answers} of 100 answered")

  stats = Snakepit.get_stats()

  IO.puts(
    "\nget_stats(): " <> inspect(Map.take(stats, [:workers, :requests, :completed, :python_errors]))
  )

  for w <- Snakepit.list_workers() do
    IO.puts("  worker #{w.worker_id}: os pid #{w.os_pid}, #{w.requests} requests, #{w.state}")
  end
end)
