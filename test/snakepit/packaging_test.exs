defmodule Snakepit.PackagingTest do
  # How users consume Snakepit: as a path dependency of their own Mix app,
  # what they see when the native library is missing, and what its Hex
  # package holds. Runs real `mix` and `elixir` OS processes.
  use ExUnit.Case, async: true

  @root Path.expand("../..", __DIR__)

  import Snakepit.TestPools, only: [tmp_dir: 1, snakepit_app: 2]

  describe "the Hex package (package: in mix.exs)" do
    # Paths that build output takes: where `mix`, cargo (for the workspace,
    # or for a crate built alone), `mix compile`'s install and Python put it.
    @build_output ~w(
      _build/test/lib/snakepit/ebin/Elixir.Snakepit.beam
      deps/some_dep/mix.exs
      target/release/libsnakepit_nif.so
      native/snakepit_wire/target/debug/libsnakepit_wire.rlib
      priv/native/libsnakepit_nif.so
      priv/native/snakepit_shepherd
      priv/python/snakepit_bridge/__pycache__/worker.cpython-311.pyc
      priv/python/snakepit_bridge/examples/__pycache__/demo.cpython-311.pyc
      priv/python/launcher/__pycache__/snakepit_worker.cpython-311.pyc
      priv/python/build_backend/__pycache__/snakepit_build.cpython-311.pyc
      priv/python/.pytest_cache/v/cache/nodeids
      priv/python/.mypy_cache/3.11/snakepit_bridge/worker.data.json
      priv/python/.ruff_cache/0.5.0/12345
      priv/python/tests/__pycache__/conftest.cpython-311-pytest-8.0.pyc
    )

    test "is Apache-2.0, the license of LICENSE and of the native crates" do
      assert package()[:licenses] == ["Apache-2.0"]
      assert File.read!(Path.join(@root, "LICENSE")) =~ ~r/^\s+Apache License\s+Version 2\.0,/

      for manifest <- Path.wildcard(Path.join(@root, "native/*/Cargo.toml")) do
        assert File.read!(manifest) =~ ~s(\nlicense = "Apache-2.0"\n), manifest
      end
    end

    test "each entry of files: names something, and none takes build output" do
      files = package()[:files]

      for entry <- files do
        assert Path.wildcard(Path.join(@root, entry)) != [], "#{entry} matches no file"
      end

      # In this tree as it is: built, tested, with whatever caches it has.
      assert Enum.filter(packaged(@root, files), &build_output?/1) == []
    end

    test "files: takes every tracked source a build needs, and nothing else" do
      {tracked, 0} = System.cmd("git", ["ls-files"], cd: @root)
      tracked = String.split(tracked, "\n", trim: true)
      # A copy of the tracked tree (empty files), with build output beside it.
      tree = tmp_dir("snakepit_package_tree")

      for path <- tracked ++ @build_output do
        File.mkdir_p!(Path.join(tree, Path.dirname(path)))
        File.touch!(Path.join(tree, path))
      end

      packaged = packaged(tree, package()[:files])
      assert Enum.filter(tracked, &needed?/1) -- packaged == []
      assert Enum.reject(packaged, &needed?/1) == []
    end
  end

  defp package, do: Mix.Project.config()[:package]

  # The files `mix hex.build` packs for `entries`, relative to `root`: each
  # entry's wildcard matches, a directory with everything under it, hidden
  # files included.
  defp packaged(root, entries) do
    entries
    |> Enum.flat_map(&Path.wildcard(Path.join(root, &1)))
    |> Enum.flat_map(&files_under/1)
    |> Enum.map(&Path.relative_to(&1, root))
    |> Enum.uniq()
  end

  defp files_under(path) do
    if File.dir?(path),
      do: path |> File.ls!() |> Enum.flat_map(&files_under(Path.join(path, &1))),
      else: [path]
  end

  # What a user needs to build Snakepit from source: the Mix project, the
  # Elixir sources, the cargo workspace and crates, the Python runtime
  # (not its tests, which need test/support), and the docs README links.
  defp needed?(path) do
    top = ~w(mix.exs .formatter.exs README.md LICENSE CHANGELOG.md Cargo.toml Cargo.lock)

    not build_output?(path) and
      (path in top or String.starts_with?(path, ~w(lib/ docs/ native/ priv/python/ priv/templates/))) and
      not String.starts_with?(path, "priv/python/tests/")
  end

  defp build_output?(path) do
    caches = ~w(_build deps target __pycache__ .pytest_cache .mypy_cache .ruff_cache)

    String.starts_with?(path, "priv/native/") or
      Enum.any?(Path.split(path), &(&1 in caches)) or
      Path.extname(path) in ~w(.so .pyc .beam .rlib)
  end

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
