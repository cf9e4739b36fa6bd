defmodule Snakepit.Adversarial.BridgePathTest do
  # Modules in a worker's working directory must not shadow the bridge or
  # what it imports (docs/python.md, "The worker's sys.path"). Not async:
  # one test changes the BEAM's own PYTHONPATH, which every pool inherits.
  use ExUnit.Case, async: false
  import ExUnit.CaptureLog

  alias Snakepit.{Error, TestPools}

  @support_python Path.expand("../support/python", __DIR__)

  # An adapter that reports what its worker's interpreter sees.
  @probe """
  import importlib
  import os
  import sys

  from snakepit_bridge import BaseAdapter, tool


  class Probe(BaseAdapter):
      @tool
      def sys_path(self):
          return sys.path

      @tool
      def origin(self, module):
          try:
              return importlib.import_module(module).__file__
          except ModuleNotFoundError:
              return None

      @tool
      def cwd(self):
          return os.getcwd()
  """

  setup do
    probe_dir = TestPools.tmp_dir("snakepit_probe")
    File.write!(Path.join(probe_dir, "snakepit_path_probe.py"), @probe)

    %{
      probe_dir: probe_dir,
      markers: TestPools.tmp_dir("snakepit_markers"),
      cwd: TestPools.tmp_dir("snakepit_hostile_cwd"),
      priv_python: Path.expand(Path.join(:code.priv_dir(:snakepit), "python"))
    }
  end

  # A module that, if it is ever imported, leaves a marker named after
  # itself and kills its interpreter with a status of its own.
  defp plant(dir, relative, markers) do
    path = Path.join(dir, relative)
    File.mkdir_p!(Path.dirname(path))
    marker = Path.join(markers, String.replace(relative, "/", "."))

    File.write!(path, """
    import os
    with open(#{inspect(marker)}, "w") as f:
        f.write("imported")
    os._exit(86)
    """)
  end

  defp probe_pool(ctx, extra) do
    TestPools.start_pool(
      Keyword.merge(
        [
          size: 1,
          adapter: "snakepit_path_probe.Probe",
          python_path: [ctx.probe_dir, @support_python]
        ],
        extra
      )
    )
  end

  defp call!(pool, tool, args \\ %{}) do
    assert {:ok, result} = Snakepit.execute(tool, args, pool: pool, timeout: 10_000)
    result
  end

  defp refute_under(paths, dir) do
    for path <- List.wrap(paths) do
      refute path == dir or String.starts_with?(path, dir <> "/"),
             "#{inspect(path)} is in #{dir}"
    end
  end

  describe "a hostile working directory" do
    test "a snakepit_bridge package there is never imported", ctx do
      plant(ctx.cwd, "snakepit_bridge/__init__.py", ctx.markers)
      plant(ctx.cwd, "snakepit_bridge/__main__.py", ctx.markers)

      pool = probe_pool(ctx, cwd: ctx.cwd)

      assert call!(pool, "cwd") == ctx.cwd

      assert call!(pool, "origin", %{module: "snakepit_bridge"}) ==
               Path.join(ctx.priv_python, "snakepit_bridge/__init__.py")

      refute_under(call!(pool, "sys_path"), ctx.cwd)
      assert File.ls!(ctx.markers) == []
    end

    test "codecs and stdlib modules there are never imported, at start or later", ctx do
      # What the bridge imports (ormsgpack falls back to msgpack), what
      # site imports at startup, and modules imported later by a tool.
      modules = ~w(ormsgpack msgpack logging argparse traceback inspect sitecustomize json)
      for module <- modules, do: plant(ctx.cwd, module <> ".py", ctx.markers)

      pool = probe_pool(ctx, cwd: ctx.cwd)

      for module <- ~w(ormsgpack msgpack logging json) do
        refute_under(call!(pool, "origin", %{module: module}), ctx.cwd)
      end

      refute_under(call!(pool, "sys_path"), ctx.cwd)
      assert File.ls!(ctx.markers) == []
    end

    test "the BEAM's cwd is not on the path either (no :cwd option)", ctx do
      # The test runs in the project root: nothing hostile there, so look.
      pool = probe_pool(ctx, [])
      beam_cwd = File.cwd!()
      assert call!(pool, "cwd") == beam_cwd
      refute beam_cwd in call!(pool, "sys_path")
    end
  end

  describe "PYTHONPATH" do
    setup do
      previous = System.get_env("PYTHONPATH")

      on_exit(fn ->
        if previous,
          do: System.put_env("PYTHONPATH", previous),
          else: System.delete_env("PYTHONPATH")
      end)
    end

    test "empty entries in the BEAM's PYTHONPATH do not put the cwd on the path", ctx do
      plant(ctx.cwd, "ormsgpack.py", ctx.markers)
      plant(ctx.cwd, "sitecustomize.py", ctx.markers)
      System.put_env("PYTHONPATH", ":/nonexistent_snakepit_a::/nonexistent_snakepit_b:")

      pool = probe_pool(ctx, cwd: ctx.cwd)
      path = call!(pool, "sys_path")

      # python_path, the bridge, then what the BEAM inherited, in order.
      assert Enum.take(path, 5) ==
               [
                 ctx.probe_dir,
                 @support_python,
                 ctx.priv_python,
                 "/nonexistent_snakepit_a",
                 "/nonexistent_snakepit_b"
               ]

      refute_under(path, ctx.cwd)
      assert File.ls!(ctx.markers) == []
    end

    test "a PYTHONPATH in the pool's :env extends the path instead of replacing it", ctx do
      plant(ctx.cwd, "ormsgpack.py", ctx.markers)

      pool =
        probe_pool(ctx,
          cwd: ctx.cwd,
          python_path: [@support_python],
          env: %{"PYTHONPATH" => "#{ctx.probe_dir}::"}
        )

      path = call!(pool, "sys_path")
      assert Enum.take(path, 3) == [@support_python, ctx.priv_python, ctx.probe_dir]
      refute_under(path, ctx.cwd)
      assert File.ls!(ctx.markers) == []
    end
  end

  describe "an adapter in the working directory" do
    setup ctx do
      File.write!(Path.join(ctx.cwd, "cwd_adapter.py"), """
      from snakepit_bridge import BaseAdapter, tool


      class Adapter(BaseAdapter):
          @tool
          def hello(self):
              return "hello from the cwd"
      """)

      :ok
    end

    test "is not importable by accident: the error says to add it to :python_path", ctx do
      Process.flag(:trap_exit, true)

      capture_log(fn ->
        result =
          Snakepit.Pool.start_link(
            TestPools.opts(size: 1, adapter: "cwd_adapter.Adapter", cwd: ctx.cwd)
          )

        send(self(), {:result, result})
      end)

      assert_received {:result, {:error, %Error{category: :pool} = e}}
      assert e.message =~ "No module named 'cwd_adapter'"
      assert e.message =~ "working directory #{ctx.cwd} has cwd_adapter.py"
      assert e.message =~ ":python_path"
    end

    test "is importable once its directory is on :python_path", ctx do
      pool =
        TestPools.start_pool(
          size: 1,
          adapter: "cwd_adapter.Adapter",
          cwd: ctx.cwd,
          python_path: [ctx.cwd]
        )

      assert call!(pool, "hello") == "hello from the cwd"
    end
  end
end
