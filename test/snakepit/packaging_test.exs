defmodule Snakepit.PackagingTest do
  # How users consume Snakepit: as a path dependency of their own Mix app,
  # and what they see when the native library is missing. Runs real `mix` and
  # `elixir` OS processes.
  use ExUnit.Case, async: true

  @root Path.expand("../..", __DIR__)

  import Snakepit.TestPools, only: [tmp_dir: 1, snakepit_app: 2]

  @tag timeout: 180_000
  test "a Mix app with {:snakepit, path: ...} builds, loads the NIF and calls Python" do
    app = tmp_dir("snakepit_user_app")

    File.write!(Path.join(app, "mix.exs"), """
    defmodule UserApp.MixProject do
      use Mix.Project
      def project, do: [app: :user_app, version: "0.1.0", deps: [{:snakepit, path: #{inspect(@root)}}]]
      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.mkdir_p!(Path.join(app, "config"))

    File.write!(Path.join(app, "config/config.exs"), """
    import Config
    config :snakepit, pools: [default: [adapter: "snakepit_bridge.examples.demo.DemoAdapter", size: 1]]
    """)

    # run_as_script/2 starts the configured pools, runs the function, and
    # stops them: no worker process may be left when it returns.
    script = """
    result = Snakepit.run_as_script(fn ->
      pids = Enum.map(Snakepit.list_workers(), & &1.os_pid)
      {Snakepit.execute("add", %{a: 20, b: 22}), pids}
    end)
    {answer, pids} = result
    IO.inspect(answer)
    IO.puts("left alive: " <> inspect(Enum.filter(pids, &File.exists?("/proc/\#{&1}"))))
    """

    {out, status} =
      System.cmd("mix", ["run", "-e", script],
        cd: app,
        stderr_to_stdout: true,
        env: [{"MIX_ENV", "dev"}, {"MIX_BUILD_PATH", nil}, {"MIX_DEPS_PATH", nil}]
      )

    assert status == 0, out
    assert out =~ "{:ok, 42}"
    assert out =~ "left alive: []"
  end

  test "a library built for another ABI is refused as stale, with how to rebuild it" do
    # Snakepit's code with the real library, and Snakepit.Native recompiled to
    # expect another ABI version.
    {lib, ebin} = snakepit_app("snakepit_stale_nif", :real_priv)

    source =
      File.read!(Path.join(@root, "lib/snakepit/native.ex"))
      |> String.replace(~r/@abi_version \d+/, "@abi_version 999")

    # Compiled by a separate `elixirc`, so this VM's Snakepit.Native is untouched.
    patched = Path.join(lib, "native.ex")
    File.write!(patched, source)
    {_, 0} = System.cmd("elixirc", ["-o", ebin, patched], stderr_to_stdout: true)

    script = ~s|IO.inspect(Snakepit.Native.status(), label: "status")|
    {out, 0} = System.cmd("elixir", ["-pa", ebin, "-e", script], stderr_to_stdout: true)
    assert out =~ "is stale"
    assert out =~ "this code expects 999"
    assert out =~ "mix compile --force"
  end

  test "without the native library, a pool refuses to start and says how to fix it" do
    # Snakepit's compiled code with an empty priv/.
    {_lib, ebin} = snakepit_app("snakepit_no_nif", :empty_priv)

    script = """
    {:ok, _} = Application.ensure_all_started(:snakepit)
    IO.inspect(Snakepit.Native.status(), label: "status")
    {:error, e} = Snakepit.Pool.start_link(adapter: "m.A")
    IO.puts("error: " <> e.message)
    """

    {out, 0} = System.cmd("elixir", ["-pa", ebin, "-e", script], stderr_to_stdout: true)
    assert out =~ "status: {:error"
    assert out =~ "error: Snakepit's native library could not be loaded"
    assert out =~ "The library does not exist: it is built by `mix compile`"
  end
end
